from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

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
    # i6 is in .item and .link only: no interaction names it, so it is no item (every importer's rule)
    assert (ds.num_users, ds.num_items) == (3, 5) and "i6" not in list(ds.ids["items"])
    assert ds.provenance["import"]["item_rows_dropped"] == 1 and ds.provenance["import"]["links_dropped"] == 1
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


def write_presplit(root: Path, train: str, valid: str, test: str) -> Path:
    """<root>/<name>.{train,valid,test}.inter with user_id and item_id columns (rows as text)."""
    root.mkdir(parents=True, exist_ok=True)
    head = "user_id:token\titem_id:token\n"
    for split, rows in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{root.name}.{split}.inter").write_text(head + rows)
    return root


def test_recbole_presplit_files_are_kept_exactly(tmp_path: Path) -> None:
    root = write_presplit(tmp_path / "pre", "a\tx\na\ty\nb\tx\nb\tz\n", "a\tz\n", "b\ty\n")
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
        ({"inter": "user_id:token\trating:float\nu1\t3\n"}, r"toy\.inter, line 1, column 'item_id': column is missing"),
        ({"inter": "user_id\titem_id\nu1\ti1\n"}, r"header cell 'user_id' is not 'name:type'"),
        ({"inter": INTER + "u4\ti1\t5\tlate\n"}, r"toy\.inter, line 10, column 'timestamp': 'late' is not a number"),
        ({"inter": INTER + "\ti1\t5\t1\n"}, r"toy\.inter, line 10, column 'user_id': empty id"),
        ({"link": LINK + "i99\tm.9\n"}, r"toy\.link, line 5, column 'item_id': unknown item 'i99'"),
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


def test_planted_synth_is_seeded_and_its_structure_is_learnable() -> None:
    """The planted generator: exact counts, seeded, heavy-tailed, and a ranking on it means
    something: EASE (which recovers co-occurrence structure) beats the most-popular ranking
    by a wide margin, and the features tell same-cluster items apart."""
    from slifmr.data.format import VALID
    from slifmr.data.synth import synthesize_planted
    from slifmr.evaluation import Evaluator
    from slifmr.model.ease import EASE

    a = synthesize_planted(users=1500, items=300, interactions=20000, seed=3)
    b = synthesize_planted(users=1500, items=300, interactions=20000, seed=3)
    assert a.num_interactions == 20000 and np.unique(a.user * 300 + a.item).size == 20000
    np.testing.assert_array_equal(a.item, b.item)
    np.testing.assert_array_equal(a.features["text"], b.features["text"])
    assert not np.array_equal(a.item, synthesize_planted(users=1500, items=300, interactions=20000, seed=4).item)
    for deg in (np.bincount(a.user), np.bincount(a.item)):
        assert deg.max() > 4 * np.median(deg)  # power-law users and items
    evaluator = Evaluator(a, [20])
    popularity = torch.bincount(torch.from_numpy(a.edges(0)[1]), minlength=a.num_items).float()
    pop = evaluator.evaluate(lambda users: popularity.expand(users.numel(), -1), VALID)["recall@20"]
    ease = EASE(a)
    ease.fit(50.0)
    assert evaluator.evaluate(ease.full_scores, VALID)["recall@20"] > 1.3 * pop
    cluster = {r[0]: r[2] for r in a.kg if a.relation_names[r[1]] == "in_cluster"}
    x = a.features["image"] / np.linalg.norm(a.features["image"], axis=1, keepdims=True)
    same = np.array([[cluster[i] == cluster[j] for j in range(300)] for i in range(300)])
    sim = x @ x.T
    assert sim[same & ~np.eye(300, dtype=bool)].mean() > sim[~same].mean() + 0.2


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
    with pytest.raises(DataError, match=r"toy\.inter, line 12, column 'userID': id 'x2' is not an integer"):
        import_mmrec(root)


# ----------------------------------------------------------------------------- faults, by kind (issue 12)


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    from slifmr.cli import main

    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def one_error(argv: list[str], capsys: pytest.CaptureFixture, out: Path) -> str:
    code, _, lines = cli([*argv, "--out", str(out)], capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return lines[0]


@pytest.mark.parametrize(
    "files, match",
    [
        # timestamps: numeric seconds only, never guessed
        ({"inter": INTER + "u4\ti1\t5\t2018-03-01\n"}, r"toy\.inter, line 10, column 'timestamp': '2018-03-01' is not a number"),
        ({"inter": INTER + "u4\ti1\t5\tMar 1 2018\n"}, r"line 10, column 'timestamp': 'Mar 1 2018' is not a number"),
        ({"inter": INTER + "u4\ti1\t5\tnan\n"}, r"line 10, column 'timestamp': 'nan' is not a finite number"),
        ({"inter": INTER + "u4\ti1\t5\t1e999\n"}, r"line 10, column 'timestamp': '1e999' is not a finite number"),
        ({"inter": INTER + "u4\ti1\t5\t\n"}, r"line 10, column 'timestamp': empty cell"),
        # ids: stripped; empty or control characters refused
        ({"inter": INTER + "  \ti1\t5\t1\n"}, r"line 10, column 'user_id': empty id"),
        ({"inter": INTER + "u\x01\ti1\t5\t1\n"}, r"line 10, column 'user_id': id 'u\\x01' holds a control character"),
        ({"kg": KG + "m.1\t \tm.2\n"}, r"toy\.kg, line 6, column 'relation_id': empty id"),
        ({"link": LINK + "i3\t\n"}, r"toy\.link, line 5, column 'entity_id': empty id"),
        ({"link": LINK + "i1\tm.9\n"}, r"toy\.link, line 5, column 'item_id': item 'i1' is linked a second time \(first at line 2\)"),
        # line numbers are physical lines: blank lines and CRLF count
        ({"inter": INTER.replace("u1\ti3", "\nu1\ti3") + "\n\nu4\ti1\t5\tlate\n"}, r"line 13, column 'timestamp': 'late'"),
        ({"inter": INTER.replace("\n", "\r\n") + "u4\ti1\t5\tlate\r\n"}, r"line 10, column 'timestamp': 'late'"),
        # shape of the file
        ({"inter": INTER + "u4\ti1\t5\n"}, r"toy\.inter, line 10: has 3 tab-separated cells, the header has 4"),
        ({"inter": "user_id:token\titem_id:token\tuser_id:token\nu1\ti1\tu2\n"}, r"line 1, column 'user_id': column is named twice"),
        ({"inter": "user_id:token\titem_id:token\n"}, r"toy\.inter: has no data rows"),
        ({"inter": ""}, r"toy\.inter, line 1: the header line is empty \(the file is empty\)"),
        ({"item": ITEM.replace("i1\tToy Story", "i1\tToy Story\textra")}, r"toy\.item, line 2: has 5 tab-separated cells, the header has 4"),
        ({"item": "item_id:token\tprice:float\ni1\tcheap\n"}, r"toy\.item, line 2, column 'price': 'cheap' is not a number"),
        # explicit feedback
        ({"inter": INTER.replace("rating:float", "label:float").replace("\t3\t", "\t0\t")},
         r"column 'label': 1 row holds label <= 0 \(explicit negatives; the first is line 3\); pass --threshold label=1"),
        # a split that cannot be made
        ({"inter": "user_id:token\titem_id:token\na\tx\na\ty\nb\tx\n"},
         r"toy\.inter: no user has 3 or more interactions, so the per-user 8:1:1 split leaves the valid and test splits empty"),
    ],
)
def test_recbole_faults_name_file_line_column_and_value(tmp_path: Path, files: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        import_recbole(write_recbole(tmp_path / "toy", **files))


def test_not_utf8_names_line_column_and_bytes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_recbole(tmp_path / "toy")
    (root / "toy.inter").write_bytes(INTER.encode() + "u4\tété\t5\t1\n".encode("latin-1"))
    line = one_error(["data", "import", "recbole", str(root)], capsys, tmp_path / "out")
    assert line.endswith("toy.inter, line 10, column 'item_id': not UTF-8 (bytes b'\\xe9t\\xe9'); save the file as UTF-8")
    (root / "toy.inter").write_text(INTER)
    (root / "toy.kg").write_bytes(b"head_id:token\trelation_id:token\ttail_id:token\xff\nm.1\tr\tm.2\n")
    line = one_error(["data", "import", "recbole", str(root)], capsys, tmp_path / "out")
    assert "toy.kg, line 1: not UTF-8 (bytes b'tail_id:token\\xff')" in line


def test_bom_is_skipped_in_every_atomic_file(tmp_path: Path) -> None:
    plain = import_recbole(write_recbole(tmp_path / "plain"), split_seed=1)
    root = write_recbole(tmp_path / "bom")
    for p in root.iterdir():
        p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    ds = import_recbole(root, split_seed=1)
    assert (ds.num_users, ds.num_items, ds.num_entities) == (plain.num_users, plain.num_items, plain.num_entities)
    np.testing.assert_array_equal(ds.kg, plain.kg)
    np.testing.assert_array_equal(ds.item_entity, plain.item_entity)
    assert ds.items.equals(plain.items)


def test_bom_in_mmrec_header(tmp_path: Path) -> None:
    root = write_mmrec(tmp_path / "toy")
    (root / "toy.inter").write_bytes(b"\xef\xbb\xbf" + (root / "toy.inter").read_bytes())
    assert import_mmrec(root).num_interactions == 20


def test_ids_with_surrounding_whitespace_are_one_id(tmp_path: Path) -> None:
    inter = INTER.replace("u1\ti2", "u1 \ti2 ").replace("u2\ti5", " u2\t\u00a0i5")
    ds = import_recbole(write_recbole(tmp_path / "toy", inter=inter, link=LINK.replace("i2\t", " i2\t")), split_seed=1)
    assert sorted(ds.ids["users"]) == ["u1", "u2", "u3"]
    assert sorted(ds.ids["items"]) == ["i1", "i2", "i3", "i4", "i5"]  # i6: .item only, not in the catalogue
    assert ds.item_entity.shape == (2, 2)  # i6's link is dropped with it


def test_presplit_user_only_in_valid_names_the_source_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_presplit(tmp_path / "pre", "a\tx\nb\tx\n", "a\ty\n\nnew \tz\nb\ty\n", "a\tz\nb\tz\n")
    line = one_error(["data", "import", "recbole", str(root)], capsys, tmp_path / "out")
    assert line == (f"error: {root / 'pre.valid.inter'}, line 4, column 'user_id': user 'new ' has no training "
                    "interaction (no row in pre.train.inter); every user needs one: drop the user or add a training row")


@pytest.mark.parametrize(
    "test_rows, argv, match",
    [
        ("", [], r"pre\.test\.inter: the test split would be empty: the file has no data rows"),
        ("a\tz\t1\nb\tz\t1\n", ["--threshold", "stars=2"], r"pre\.test\.inter: the test split would be empty: --threshold stars >= 2 keeps none"),
        ("a\tx\t5\n", [], r"pre\.test\.inter: the test split would be empty: each of its rows repeats a \(user, item\) pair"),
    ],
)
def test_presplit_empty_split_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture, test_rows: str,
                                             argv: list[str], match: str) -> None:
    root = tmp_path / "pre"
    root.mkdir()
    head = "user_id:token\titem_id:token\tstars:float\n"
    (root / "pre.train.inter").write_text(head + "a\tx\t5\nb\tx\t5\n")
    (root / "pre.valid.inter").write_text(head + "a\ty\t5\n")
    (root / "pre.test.inter").write_text(head + test_rows)
    import re

    assert re.search(match, one_error(["data", "import", "recbole", str(root), *argv], capsys, tmp_path / "out"))


def test_presplit_needs_all_three_files(tmp_path: Path) -> None:
    root = tmp_path / "pre"
    root.mkdir()
    (root / "pre.train.inter").write_text("user_id:token\titem_id:token\na\tx\n")
    (root / "pre.test.inter").write_text("user_id:token\titem_id:token\na\ty\n")
    with pytest.raises(DataError, match=r"pre\.valid\.inter: file is missing: a pre-split set needs"):
        import_recbole(root)


def test_threshold_keeps_rows_at_or_above_and_reports_the_drop(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_recbole(tmp_path / "toy", item=None, kg=None, link=None,
                         inter=INTER + "".join(f"u{u}\ti{i}\t{(u + i) % 5 + 1}\t1\n" for u in range(4, 9) for i in range(1, 6)))
    code, out, err = cli(["data", "import", "recbole", str(root), "--threshold", "rating=4", "--out", str(tmp_path / "d")], capsys)
    assert code == 0, err
    ds = read_dataset(tmp_path / "d")
    total = 8 + 25
    kept = 5 + sum((u + i) % 5 + 1 >= 4 for u in range(4, 9) for i in range(1, 6))
    assert ds.num_interactions == kept
    assert ds.provenance["threshold"] == {"rating": 4.0} and ds.provenance["threshold_dropped"] == total - kept
    assert f"kept {kept} of {total} rows, dropped {total - kept}" in out
    assert any(f"--threshold rating >= 4: dropped {total - kept} of {total} rows" in line for line in err)
    code, out, _ = cli(["data", "info", str(tmp_path / "d")], capsys)
    assert "feedback      positives are rows with rating >= 4" in out


def test_rating_without_threshold_is_reported_as_ignored(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(["data", "import", "recbole", str(write_recbole(tmp_path / "toy")), "--out", str(tmp_path / "d")], capsys)
    assert code == 0
    assert "feedback      rating column ignored: every row is a positive (--threshold rating=4 keeps ratings >= 4)" in out
    assert read_dataset(tmp_path / "d").num_interactions == 8


def test_label_with_threshold_and_without(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = INTER.replace("rating:float", "label:float").replace("\t3\t", "\t0\t").replace("\t2\t", "\t0\t")
    root = write_recbole(tmp_path / "toy", inter=labels)
    line = one_error(["data", "import", "recbole", str(root)], capsys, tmp_path / "out")
    assert "column 'label': 2 rows hold label <= 0" in line and "--threshold label=1 to keep only positives" in line
    code, _, _ = cli(["data", "import", "recbole", str(root), "--threshold", "label=1", "--out", str(tmp_path / "d")], capsys)
    assert code == 0 and read_dataset(tmp_path / "d").num_interactions == 6
    positives = write_recbole(tmp_path / "pos", inter=INTER.replace("rating:float", "label:float"))
    ds = import_recbole(positives)
    assert ds.num_interactions == 8 and "every value is > 0" in ds.provenance["feedback"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threshold", "rating"], "--threshold 'rating': expected COLUMN=VALUE"),
        (["--threshold", "rating=high"], "--threshold rating=high: 'high' is not a number"),
        (["--threshold", "rating=nan"], "must be a finite number"),
        (["--threshold", "rating=1", "--threshold", "rating=2"], "--threshold rating is given twice"),
        (["--threshold", "stars=4"], "toy.inter, line 1, column 'stars': column named by --threshold stars=4 is missing"),
        (["--threshold", "user_id=4"], "'user_id' is an id or split column"),
        (["--threshold", "timestamp=1000"], "--threshold timestamp >= 1000 keeps none of its 8 rows"),
        (["--split-seed", "3", "--name", "toy"], None),
    ],
)
def test_import_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str | None) -> None:
    root = write_recbole(tmp_path / "toy")
    if message is None:  # --split-seed on a pre-split set is refused, not ignored
        write_presplit(root, "a\tx\n", "a\tx\n", "a\tx\n")
        message = "--split-seed does not apply"
    assert message in one_error(["data", "import", "recbole", str(root), *argv], capsys, tmp_path / "out")


def test_mmrec_split_seed_and_threshold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_mmrec(tmp_path / "toy")
    assert "--split-seed does not apply" in one_error(["data", "import", "mmrec", str(root), "--split-seed", "1"], capsys, tmp_path / "out")
    ds = import_mmrec(root)
    assert "rating column ignored" in ds.provenance["feedback"]
    rows = (root / "toy.inter").read_text().splitlines()
    rows = [rows[0]] + [r.replace("\t5\t", "\t2\t", 1) if k % 5 == 1 else r for k, r in enumerate(rows[1:])]
    (root / "toy.inter").write_text("\n".join(rows) + "\n")
    ds = import_mmrec(root, thresholds={"rating": 4})
    assert ds.num_interactions == 16 and ds.provenance["threshold_dropped"] == 4


def test_mmrec_huge_and_gapped_ids_are_remapped(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    rows = ["userID\titemID\ttimestamp\tx_label"]
    users = [10**12, 7, 10**15 + 3]
    for u in users:
        for j, label in enumerate([0, 0, 1, 2]):
            rows.append(f"{u}\t{10**13 + j}\t{j}\t{label}")
    (root / "big.inter").write_text("\n".join(rows) + "\n")
    ds = import_mmrec(root)
    assert (ds.num_users, ds.num_items) == (3, 4)
    assert ds.ids["users"].tolist() == sorted(users) and ds.ids["items"].tolist() == [10**13 + j for j in range(4)]
    back = read_dataset(write_dataset(ds, tmp_path / "out"))
    assert list(back.ids["users"]) == [str(u) for u in sorted(users)]


def test_mmrec_contiguous_ids_map_to_themselves(tmp_path: Path) -> None:
    ds = import_mmrec(write_mmrec(tmp_path / "toy"))
    assert ds.ids["users"].tolist() == [0, 1, 2, 3] and ds.ids["items"].tolist() == [0, 1, 2, 3, 4]
    raw = np.loadtxt(tmp_path / "toy/toy.inter", skiprows=1, dtype=np.int64)
    assert {(u, i) for u, i in zip(ds.user, ds.item)} == {(u, i) for u, i in raw[:, :2]}


def _mmrec_rows(root: Path, edit) -> Path:  # noqa: ANN001
    text = (root / "toy.inter").read_text().splitlines()
    (root / "toy.inter").write_text("\n".join(edit(text)) + "\n")
    return root


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda r: [r[0]] + [x.rsplit("\t", 2)[0] + "\tMar 1 2018\t" + x.rsplit("\t", 1)[1] for x in r[1:]],
         r"toy\.inter, line 2, column 'timestamp': 'Mar 1 2018' is not a number"),
        (lambda r: r[:3] + ["1\t2\t5\t2018-03-01\t0"] + r[3:], r"line 4, column 'timestamp': '2018-03-01' is not a number"),
        (lambda r: r + ["1\t2\t5\t9\t3"], r"line 22, column 'x_label': x_label '3' is not 0 \(train\), 1 \(valid\) or 2"),
        (lambda r: r + ["1\t2\t5\t9\tvalid"], r"line 22, column 'x_label': x_label 'valid' is not an integer"),
        (lambda r: r + ["-1\t2\t5\t9\t0"], r"line 22, column 'userID': negative id '-1'"),
        (lambda r: r + ["99999999999999999999\t2\t5\t9\t0"], r"line 22, column 'userID': id '99999999999999999999' is not an integer"),
        (lambda r: r + ["1\t7\t5\t9\t0"], r"line 22, column 'itemID': item '7' has no feature row \(the features have 5 rows"),
        (lambda r: r + ["9\t1\t5\t9\t2"], r"line 22, column 'userID': user '9' has no training interaction \(no row with x_label 0\)"),
        (lambda r: [x for x in r if not x.endswith("\t1")], r"toy\.inter: the valid split would be empty: no row has x_label 1"),
        (lambda r: [r[0].replace("x_label", "split")] + r[1:], r"toy\.inter, line 1, column 'x_label': column is missing from the header"),
        (lambda r: [r[0] + "\tlabel"] + [x + "\t0" for x in r[1:]], r"column 'label': 20 rows hold label <= 0"),
        (lambda r: [r[0]], r"toy\.inter: has no data rows"),
    ],
)
def test_mmrec_faults(tmp_path: Path, edit, match: str) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match=match):
        import_mmrec(_mmrec_rows(write_mmrec(tmp_path / "toy"), edit))


def test_mmrec_pair_in_two_splits_is_kept_in_the_earliest(tmp_path: Path) -> None:
    # (3, 1) is a valid pair, first listed as test; (0, 0) is a train pair, listed again as valid
    root = _mmrec_rows(write_mmrec(tmp_path / "toy"), lambda r: r[:1] + ["3\t1\t5\t0\t2"] + r[1:] + ["0\t0\t5\t0\t1"])
    ds = import_mmrec(root)
    assert ds.num_interactions == 20
    assert ds.split[(ds.user == 3) & (ds.item == 1)].tolist() == [1]
    assert ds.split[(ds.user == 0) & (ds.item == 0)].tolist() == [0]


@pytest.mark.parametrize(
    "array, match",
    [
        (np.ones(5, np.float32), r"image_feat\.npy: has shape \(5,\), expected a 2-D array"),
        (np.ones((5, 2, 2), np.float32), r"has shape \(5, 2, 2\), expected a 2-D array"),
        (np.array([["a"]] * 5), r"dtype <U1 is not a real number type"),
        (np.ones((5, 3), bool), r"dtype bool is not a real number type"),
        (np.ones((5, 0), np.float32), r"has shape \(5, 0\): no feature columns"),
        (np.ones((0, 3), np.float32), r"has shape \(0, 3\): no feature rows"),
        (np.array([[1.0], [np.nan], [1.0], [1.0], [1.0]]), r"image_feat\.npy: row 1, column 0: feature value nan is NaN or inf"),
        (np.array([[1.0, 1], [1, 1], [1, 1e39], [1, 1], [1, 1]]), r"image_feat\.npy: row 2, column 1: feature value 1e\+39 is beyond"),
        ("object", r"image_feat\.npy: not a readable \.npy array"),
        ("truncated", r"image_feat\.npy: not a readable \.npy array"),
        ("npz", r"image_feat\.npy: is an \.npz archive"),
    ],
)
def test_mmrec_bad_features(tmp_path: Path, array, match: str) -> None:  # noqa: ANN001
    root = write_mmrec(tmp_path / "toy")
    fp = root / "image_feat.npy"
    if isinstance(array, np.ndarray):
        np.save(fp, array)
    elif array == "object":
        np.save(fp, np.array([[1, "x"]] * 5, dtype=object), allow_pickle=True)
    elif array == "truncated":
        fp.write_bytes(fp.read_bytes()[:100])
    else:
        with open(fp, "wb") as f:
            np.savez(f, a=np.ones((5, 3)))
    with pytest.raises(DataError, match=match):
        import_mmrec(root)


def test_mmrec_integer_features_become_float32(tmp_path: Path) -> None:
    root = write_mmrec(tmp_path / "toy")
    np.save(root / "image_feat.npy", np.arange(15, dtype=np.int64).reshape(5, 3))
    ds = import_mmrec(root)
    assert ds.features["image"].dtype == np.float32 and ds.features["image"][4, 2] == 14


def test_mmrec_without_features_remaps_items(tmp_path: Path) -> None:
    root = write_mmrec(tmp_path / "toy")
    for f in ("image_feat.npy", "text_feat.npy", "toy.kg", "toy.link"):
        (root / f).unlink()
    _mmrec_rows(root, lambda r: [r[0]] + [x.replace("\t", "000\t", 2).replace("000\t", "\t", 1) for x in r[1:]])
    ds = import_mmrec(root)
    assert ds.num_items == 5 and ds.ids["items"].tolist() == [0, 1000, 2000, 3000, 4000]


def test_recbole_float_seq_fields_become_modalities_with_missing_rows(tmp_path: Path) -> None:
    item = ("item_id:token\tmovie_title:token_seq\timage:float_seq\n"
            "i1\tToy Story\t0.5 1 2\ni2\tHeat\t\ni3\tAlien\t-1  2.5 3\ni1\tAgain\t9 9 9\n")
    ds = import_recbole(write_recbole(tmp_path / "toy", item=item, link=None), split_seed=1)
    items = list(ds.ids["items"])
    x, present = ds.features["image"], ds.present("image")
    assert x.shape == (ds.num_items, 3) and "image" not in ds.items.column_names
    np.testing.assert_array_equal(x[items.index("i1")], [0.5, 1, 2])  # an item's first row
    np.testing.assert_array_equal(x[items.index("i3")], [-1, 2.5, 3])
    assert not present[items.index("i2")] and not x[items.index("i2")].any()  # empty cell: missing
    assert not present[items.index("i4")]  # no .item row
    back = read_dataset(write_dataset(ds, tmp_path / "out"))
    np.testing.assert_array_equal(back.present("image"), present)


def test_recbole_float_seq_of_two_lengths_names_the_line(tmp_path: Path) -> None:
    item = "item_id:token\timage:float_seq\ni1\t1 2\ni2\t1 2 3\n"
    with pytest.raises(DataError, match=r"toy.item, line 3, column 'image': 3 numbers, the first filled row has 2"):
        import_recbole(write_recbole(tmp_path / "toy", item=item, link=None), split_seed=1)


def test_recbole_text_cols_embed_item_metadata(tmp_path: Path) -> None:
    from slifmr.cli import main

    root = write_recbole(tmp_path / "toy")
    assert main(["-q", "data", "import", "recbole", str(root), "--text-cols", "title,genres", "--out",
                 str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 0
    ds = read_dataset(tmp_path / "out")
    assert ds.features["text"].shape == (ds.num_items, 384)
    norms = np.linalg.norm(ds.features["text"], axis=1)
    np.testing.assert_allclose(norms[ds.present("text")], 1.0, atol=1e-4)  # unit vectors from the model


def test_movielens_1m_items_take_ml100k_entities_by_title_and_year() -> None:
    """MovieLens-1M keys items "Title (Year)": ml-100k's links carry over where title and year
    agree (a year read as a float, '1995.0', still matches), and nowhere else; a film listed
    twice keeps the first listed one's entity."""
    import pyarrow as pa

    from slifmr.data.ml1m import link_by_title

    old_items = pa.table({"item_id": ["1", "2", "3", "4"], "movie_title": ["Toy Story", "GoldenEye", "Kolya", "Toy Story"],
                          "release_year": ["1995", "1995.0", "1996", "1995"]})  # 4: a film listed twice
    old_link = pa.table({"item_id": ["2", "4", "1", "3"], "entity_id": ["m.b", "m.d", "m.a", "m.c"]})
    keys = pa.chunked_array([["Toy Story (1995)", "GoldenEye (1995)", "Kolya (1997)", "Heat (1995)"]])
    link = link_by_title(old_items, old_link, keys)
    assert link.to_pylist() == [{"item_id": "GoldenEye (1995)", "entity_id": "m.b"},
                                {"item_id": "Toy Story (1995)", "entity_id": "m.a"}]
