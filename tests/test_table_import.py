"""Bring your own data: `slifmr data import table` and `data add-features` (issue 16)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from slifmr.cli import main
from slifmr.data import table as table_mod
from slifmr.data.format import TEST, TRAIN, VALID, read_dataset, write_dataset
from slifmr.data.graphs import modality_graph
from slifmr.data.ids import TokenIds
from slifmr.data.table import InteractionColumns, import_table
from slifmr.errors import DataError, SlifmrError


def _user_files(root: Path, seed: int = 0) -> Path:
    """What a new user brings: interactions.parquet (string ids, a rating), items.csv (title,
    description), image_emb.parquet (35 of 40 items), and a KG as two CSVs."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n = 50, 40, 1600
    u = rng.integers(0, n_users, n)
    i = (u * 7 + rng.integers(0, 12, n)) % n_items
    users = np.array([f"user-{x:03d}" for x in range(n_users)])
    items = np.array([f"B{x * 13:05d}" for x in range(n_items)])
    pq.write_table(pa.table({"user_id": users[u], "item_id": items[i], "rating": rng.integers(1, 6, n),
                             "ts": rng.integers(1_600_000_000, 1_700_000_000, n)}), root / "interactions.parquet")
    pacsv.write_csv(pa.table({"item_id": items, "title": [f"Item {x}" for x in range(n_items)],
                              "description": [f"A thing of kind {x % 5}" for x in range(n_items)]}), root / "items.csv")
    vectors = pa.array(list(rng.normal(size=(35, 8)).astype(np.float32)), pa.list_(pa.float32(), 8))
    pq.write_table(pa.table({"item_id": items[:35], "embedding": vectors}), root / "image_emb.parquet")
    entities = [f"/m/{x}" for x in range(30)]
    pacsv.write_csv(pa.table({"head": rng.choice(entities, 200), "relation": rng.choice(["genre", "actor"], 200),
                              "tail": rng.choice(entities, 200)}), root / "kg.csv")
    pacsv.write_csv(pa.table({"item_id": items[:30], "entity": entities}), root / "links.csv")
    return root


def test_own_files_to_a_trained_run_from_the_readme_commands(tmp_path: Path) -> None:
    src = _user_files(tmp_path)
    data = tmp_path / "mine"
    assert main(["-q", "data", "import", "table", str(src / "interactions.parquet"), "--threshold", "rating=3",
                 "--items", str(src / "items.csv"), "--text-cols", "title,description",
                 "--features", f"image={src / 'image_emb.parquet'}", "--kg", str(src / "kg.csv"),
                 "--kg-links", str(src / "links.csv"), "--out", str(data)]) == 0
    ds = read_dataset(data)
    assert set(ds.features) == {"text", "image"} and ds.features["text"].shape == (ds.num_items, 384)
    with_image = set(pq.read_table(src / "image_emb.parquet").column("item_id").to_pylist())
    items_raw = np.asarray(ds.ids["items"]).astype(str)
    assert np.array_equal(ds.present("image"), np.isin(items_raw, list(with_image)))
    assert ds.num_entities == 30 and set(ds.relation_names) == {"genre", "actor"} and ds.kg.shape == (200, 3)
    raw = pq.read_table(src / "interactions.parquet").to_pydict()
    kept = {(a, b) for a, b, r in zip(raw["user_id"], raw["item_id"], raw["rating"]) if r >= 3}
    users = np.asarray(ds.ids["users"]).astype(str)
    assert set(zip(users[ds.user], items_raw[ds.item])) == kept  # raw ids survive, every positive once
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(data), "--epochs", "2", "--out", str(run), "--set", "model.k_corr=5",
                 "--set", "model.k_mm=5"]) == 0
    result = json.loads((run / "results.json").read_text())
    assert 0 < result["test"]["recall@20"] <= 1


def test_missing_feature_rows_are_zero_marked_and_left_out_of_the_item_graph(tmp_path: Path) -> None:
    src = _user_files(tmp_path)
    ds = import_table(str(src / "interactions.parquet"), items=str(src / "items.csv"),
                      features=[table_mod.FeatureSource("image", str(src / "image_emb.parquet"))])
    present = ds.present("image")
    assert 0 < present.sum() < ds.num_items and not ds.features["image"][~present].any()
    ei, _ = modality_graph(ds.features, 3, present=ds.feature_present)
    missing = np.flatnonzero(~present)
    assert not np.isin(ei.numpy(), missing).any()
    write_dataset(ds, tmp_path / "d")
    back = read_dataset(tmp_path / "d")
    assert np.array_equal(back.present("image"), present)
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["modalities"]["image"]["coverage"] == present.mean()


def test_ids_of_any_type_and_whitespace_are_one_id_each(tmp_path: Path) -> None:
    big = 2**62 + 7
    pq.write_table(pa.table({"user_id": [big, big, big, 5, 5, 5], "item_id": [" a", "b ", "c", "a", "b", "c"]}),
                   tmp_path / "i.parquet")
    ds = import_table(str(tmp_path / "i.parquet"))
    assert ds.num_users == 2 and ds.num_items == 3
    assert list(np.asarray(ds.ids["users"]).astype(str)) == [str(big), "5"]
    assert list(np.asarray(ds.ids["items"]).astype(str)) == ["a", "b", "c"]
    (tmp_path / "i.csv").write_text("user_id,item_id\n007,x\n007,y\n007,z\n7,x\n7,y\n7,z\n")
    ds = import_table(str(tmp_path / "i.csv"))
    assert list(np.asarray(ds.ids["users"]).astype(str)) == ["007", "7"]  # CSV ids are text: 007 is not 7


def test_split_rules(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 400
    user = rng.integers(0, 20, n)
    item = rng.permutation(n)  # every (user, item) pair once
    ts = rng.permutation(n).astype(np.int64) * 10
    pq.write_table(pa.table({"u": user, "i": item, "t": ts, "part": np.where(np.arange(n) % 10 == 0, "test",
                                                                              np.where(np.arange(n) % 10 == 1, "valid", "train"))}),
                   tmp_path / "x.parquet")
    cols = InteractionColumns(user="u", item="i", time="t")
    temporal = import_table(str(tmp_path / "x.parquet"), columns=cols, split="temporal")
    for u in range(temporal.num_users):
        mine = temporal.user == u
        order = np.argsort(temporal.timestamp[mine])
        assert list(temporal.split[mine][order][-2:]) == [VALID, TEST]  # the last is test, the one before valid
    cut = import_table(str(tmp_path / "x.parquet"), columns=cols, split="global-temporal")
    assert cut.timestamp[cut.split == TRAIN].max() < cut.timestamp[cut.split == VALID].min()
    assert cut.timestamp[cut.split == VALID].max() < cut.timestamp[cut.split == TEST].min()
    given = import_table(str(tmp_path / "x.parquet"), columns=InteractionColumns(user="u", item="i", split="part"),
                         split="column")
    raw = pq.read_table(tmp_path / "x.parquet").to_pydict()
    expect = {(str(a), str(b)): {"train": TRAIN, "valid": VALID, "test": TEST}[s]
              for a, b, s in zip(raw["u"], raw["i"], raw["part"])}
    users, items = np.asarray(given.ids["users"]).astype(str), np.asarray(given.ids["items"]).astype(str)
    got = {(users[a], items[b]): int(s) for a, b, s in zip(given.user, given.item, given.split)}
    assert all(expect[k] == v for k, v in got.items()) and len(got) == len(expect)
    assert "leave-last-out" in temporal.provenance["split"] and "Meng" in cut.provenance["split"]


def test_batches_and_uri_give_the_same_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _user_files(tmp_path)
    one = import_table(str(src / "interactions.parquet"))
    monkeypatch.setattr(table_mod, "BATCH_ROWS", 97)  # many batches: dictionaries unified across them
    many = import_table(f"file://{src / 'interactions.parquet'}")
    assert one.fingerprint()["digest"] == many.fingerprint()["digest"]
    assert np.array_equal(one.split, many.split)


def test_add_features_is_atomic_and_makes_a_new_fingerprint(tmp_path: Path) -> None:
    src = _user_files(tmp_path)
    data = write_dataset(import_table(str(src / "interactions.parquet")), tmp_path / "d")
    before = json.loads((data / "meta.json").read_text())["fingerprint"]
    assert main(["-q", "data", "add-features", str(data), "--name", "image", "--from", str(src / "image_emb.parquet")]) == 0
    ds = read_dataset(data)
    assert "image" in ds.features and ds.fingerprint()["digest"] != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folder left
    with pytest.raises(SlifmrError, match="already has a modality"):
        table_mod.add_features(data, "image", str(src / "image_emb.parquet"))


@pytest.mark.parametrize(("spec", "path", "column"), [
    ("image=img.parquet", "img.parquet", None),
    ("image=img.parquet:clip", "img.parquet", "clip"),
    ("image=s3://bucket/emb/img.parquet", "s3://bucket/emb/img.parquet", None),
    ("image=s3://bucket/emb/img.parquet:clip", "s3://bucket/emb/img.parquet", "clip"),
    ("image=vectors.npy", "vectors.npy", None),
])
def test_feature_spec_names_path_and_column(spec: str, path: str, column: str | None) -> None:
    f = table_mod.FeatureSource.parse(spec)
    assert (f.name, f.path, f.column) == ("image", path, column)


def test_metadata_rows_in_two_batches_and_an_item_column_of_their_own(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "i.csv").write_text("user_id,item_id\n" + "".join(f"u{u},i{k}\n" for u in range(4) for k in range(4)))
    (tmp_path / "items.csv").write_text("item_id,item,title\ni0,x,A\ni1,y,B\ni2,z,C\ni9,w,unknown\ni1,v,again\n")
    monkeypatch.setattr(table_mod, "BATCH_ROWS", 2)
    with pytest.raises(DataError, match=r"row 4 \(line 6\), column 'item_id': item 'i1' has a second row"):
        import_table(str(tmp_path / "i.csv"), items=str(tmp_path / "items.csv"))
    (tmp_path / "items.csv").write_text("item_id,item,title\ni0,x,A\ni1,y,B\ni2,z,C\ni9,w,unknown\n")
    ds = import_table(str(tmp_path / "i.csv"), items=str(tmp_path / "items.csv"))
    meta = ds.items.to_pydict()
    assert meta["item"] == [0, 1, 2] and meta["item_"] == ["x", "y", "z"] and meta["title"] == ["A", "B", "C"]
    assert ds.provenance["import"]["item_rows_dropped"] == 1


def test_min_per_key_packs_or_sorts_indirectly_with_the_same_result() -> None:
    """The smallest value per key, whether (key, value) packs into one int64 or not (then only
    repeated keys are sorted indirectly: every key repeated, a few, none)."""
    from slifmr.data.pairs import min_per_key as _min_per_key

    rng = np.random.default_rng(0)
    value = rng.permutation(3000).astype(np.int64)
    for high, distinct in ((50, 50), (2**61, 50), (2**61, 2990), (2**61, 3000)):  # packs; the rest overflow int64
        key = high - 1 - rng.permutation(distinct)[np.r_[np.arange(distinct), rng.integers(0, distinct, 3000 - distinct)]]
        expected = np.sort([value[key == k].min() for k in np.unique(key)])
        assert np.array_equal(np.sort(_min_per_key(key.astype(np.int64), value)), expected)


def test_foreign_dictionaries_repeated_or_null_entries(tmp_path: Path) -> None:
    """A dictionary-encoded id column from another writer may repeat an entry ('a' twice: one
    id, one user) or hold a null entry that rows use (a missing id, named by its row)."""
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"user_id": ["x"]}), path)
    table = table_mod.open_table(path, ["user_id"])
    repeated = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 0], pa.int32()), pa.array(["a", "b", "a"]))
    padded = pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int32()), pa.array(["c", " a "]))
    for chunks in ([repeated], [repeated, repeated], [repeated, padded], [padded, repeated]):  # one chunk is not unified by Arrow
        encoder = TokenIds()
        for chunk in chunks:
            encoder.add(table, chunk, 0, "user_id")
        tokens, codes = encoder.finish()
        rows = [v for chunk in chunks for v in table_mod.token_array(table_mod.id_tokens(table, chunk, 0, "user_id")).to_pylist()]
        assert sorted(tokens.to_pylist()) == sorted(set(rows))  # each id once
        assert tokens.take(pa.array(codes)).to_pylist() == rows
    with_null = pa.DictionaryArray.from_arrays(pa.array([0, 0, 1], pa.int32()), pa.array(["a", None]))
    with pytest.raises(DataError, match="row 2.*missing id"):
        table_mod.id_tokens(table, with_null, 0, "user_id")


def test_the_first_bad_row_is_named_whichever_check_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids are checked once, after reading; the error still names the earliest bad row: an item
    id before a user id in a later batch, an id before a bad number further on."""
    monkeypatch.setattr(table_mod, "BATCH_ROWS", 2)
    (tmp_path / "a.csv").write_text("user_id,item_id,rating\nu0,i0,5\nu1, ,5\n ,i2,5\n")
    with pytest.raises(DataError, match=r"row 1 \(line 3\), column 'item_id': empty id"):
        import_table(str(tmp_path / "a.csv"))
    (tmp_path / "b.csv").write_text("user_id,item_id,rating\nu0,i0,5\n\t,i1,5\nu2,i2,5\nu3,i3,x\n")
    with pytest.raises(DataError, match=r"row 1 \(line 3\), column 'user_id': empty id"):
        import_table(str(tmp_path / "b.csv"), columns=InteractionColumns(thresholds={"rating": 3}))


def test_dictionary_entries_no_row_uses_are_neither_checked_nor_kept(tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"user_id": ["x"]}), path)
    table = table_mod.open_table(path, ["user_id"])
    unused = pa.DictionaryArray.from_arrays(pa.array([0, 2], pa.int32()), pa.array(["a", " ", "b"]))
    unused_null = pa.DictionaryArray.from_arrays(pa.array([0, 2], pa.int32()), pa.array(["a", None, "b"]))
    assert table_mod.token_array(table_mod.id_tokens(table, unused_null, 0, "user_id")).to_pylist() == ["a", "b"]
    for chunks in ([unused], [unused, unused], [unused_null], [unused_null, unused]):
        encoder = TokenIds()
        for chunk in chunks:
            encoder.add(table, chunk, 0, "user_id")
        tokens, codes = encoder.finish()
        assert tokens.to_pylist() == ["a", "b"] and codes.tolist() == [0, 1] * len(chunks)


# --- a folder of files is one table; its errors name the file and that file's own row ------------

def _parts(folder: Path, tables: list[pa.Table], csv: bool = False) -> Path:
    folder.mkdir()
    for k, t in enumerate(tables):
        if csv:
            pacsv.write_csv(t, folder / f"part-{k:05d}.csv")
        else:
            pq.write_table(t, folder / f"part-{k:05d}.parquet")
    return folder


def _clicks(start: int, n: int, **extra: list) -> pa.Table:
    return pa.table({"user_id": [f"u{(start + r) % 7}" for r in range(n)],
                     "item_id": [f"i{(start + 3 * r) % 11}" for r in range(n)], **extra})


@pytest.mark.parametrize("csv", [False, True])
@pytest.mark.parametrize("bad, column, message", [
    ("blank id", "user_id", "empty id '  '"),
    ("missing time", "ts", "missing number"),
])
def test_a_bad_row_in_a_folder_names_its_file_and_its_own_row(bad: str, column: str, message: str, csv: bool,
                                                              tmp_path: Path) -> None:
    tables = [_clicks(20 * k, 20, ts=list(range(20))) for k in range(4)]
    t = tables[2].to_pydict()
    if bad == "blank id":
        t["user_id"][13] = "  "
    else:
        t["ts"][13] = None
    tables[2] = pa.table(t)
    folder = _parts(tmp_path / "clicks", tables, csv)
    split = ["--split", "temporal", "--time-col", "ts"] if bad == "missing time" else []
    with pytest.raises(DataError) as e:
        import_table(str(folder), split=split[1] if split else "random",
                     columns=InteractionColumns(time="ts" if split else None))
    where = f"{folder}/part-00002.{'csv' if csv else 'parquet'}, row 13" + (" (line 15)" if csv else "")
    assert str(e.value).startswith(f"{where}, column '{column}': {message}"), str(e.value)


@pytest.mark.parametrize("order", ["added later", "added first"])
def test_a_folders_columns_are_the_union_of_its_files(order: str, tmp_path: Path) -> None:
    """A column present in some files only: found whichever file sorts first, and the files that
    lack it are named; files that all have it are read as one table."""
    old, new = _clicks(0, 40), _clicks(40, 40, ts=list(range(40)))
    folder = _parts(tmp_path / "events", [old, new] if order == "added later" else [new, old])
    lacking = f"{folder}/part-0000{0 if order == 'added later' else 1}.parquet"
    with pytest.raises(DataError, match=f"^{lacking}, column 'ts': column is missing .*although other files"):
        import_table(str(folder), split="temporal", columns=InteractionColumns(time="ts"))
    ds = import_table(str(folder))  # ts not asked for: every file has what is read
    assert ds.num_interactions == len({(u, i) for t in (old, new) for u, i in zip(t["user_id"].to_pylist(),
                                                                                    t["item_id"].to_pylist())})


def test_a_folders_files_whose_types_conflict_are_named(tmp_path: Path) -> None:
    folder = _parts(tmp_path / "mixed", [_clicks(0, 10, rating=[4] * 10), _clicks(10, 10, rating=["good"] * 10)])
    with pytest.raises(DataError, match=r"column 'rating': the files' column types differ: int64 in .*part-00000\.parquet, "
                                        r"string in .*part-00001\.parquet"):
        import_table(str(folder))


# --- feature tables: the layouts CSV can hold a vector in ------------------------------------

def test_feature_tables_in_every_layout_give_the_same_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    items = [f"i{k}" for k in range(11)]
    x = rng.normal(size=(len(items), 4)).astype(np.float32).round(3)
    folder = _parts(tmp_path / "clicks", [_clicks(0, 60)])
    layouts = {
        "list.parquet": None,
        "space.csv": "item_id,emb\n" + "".join(f'{i},"{" ".join(map(str, v))}"\n' for i, v in zip(items, x)),
        "brackets.csv": "item_id,emb\n" + "".join(f'{i},"[{", ".join(map(str, v))}]"\n' for i, v in zip(items, x)),
        "wide.csv": "item_id,d0,d1,d2,d3\n" + "".join(f"{i}," + ",".join(map(str, v)) + "\n" for i, v in zip(items, x)),
        "space.tsv": "item_id\temb\n" + "".join(f"{i}\t{' '.join(map(str, v))}\n" for i, v in zip(items, x)),
    }
    pq.write_table(pa.table({"item_id": items, "emb": pa.array(list(x), pa.list_(pa.float32()))}), tmp_path / "list.parquet")
    got = {}
    for name, text in layouts.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        ds = import_table(str(folder), features=[table_mod.FeatureSource("image", str(tmp_path / name))])
        order = [int(i[1:]) for i in ds.ids["items"].to_pylist()]
        got[name] = ds.features["image"]
        np.testing.assert_allclose(got[name], x[order], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("text, message", [
    ("item_id,emb\ni0,0.1 0.2\ni1,0.3 oops\n", "row 1 (line 3), column 'emb': '0.3 oops' is not a vector of numbers"),
    ("item_id,emb\ni0,0.1 0.2\ni1,0.3\n", "row 1 (line 3), column 'emb': vector of length 1, expected 2"),
    ("item_id,d0,d1\ni0,0.1,0.2\ni1,0.3,\n", "row 1 (line 3), column 'd1': missing number"),
    ("item_id,a,b\ni0,x y,1 2\n", "needs one vector column besides the item id 'item_id'"),
])
def test_a_bad_feature_cell_is_named(text: str, message: str, tmp_path: Path) -> None:
    folder = _parts(tmp_path / "clicks", [_clicks(0, 60)])
    (tmp_path / "f.csv").write_text(text)
    with pytest.raises(DataError, match=re.escape(message)):
        import_table(str(folder), features=[table_mod.FeatureSource("image", str(tmp_path / "f.csv"))])


def _same_rows_as(importer: str, root: Path, header: list[str], rows: list[list[str]]) -> Path:
    """The same interactions as a CSV table or a RecBole atomic file."""
    if importer == "table":
        path = root / "inter.csv"
        path.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
        return path
    folder = root / "toy"
    folder.mkdir()
    types = {"user_id": "token", "item_id": "token"}
    (folder / "toy.inter").write_text("\t".join(f"{h}:{types.get(h, 'float')}" for h in header) + "\n"
                                      + "".join("\t".join(r) + "\n" for r in rows))
    return folder


def _import(importer: str, path: Path, thresholds: dict[str, float] | None = None):  # noqa: ANN202
    from slifmr.data.recbole import import_recbole

    if importer == "table":
        return import_table(str(path), columns=InteractionColumns(thresholds=thresholds or {}))
    return import_recbole(path, thresholds=thresholds)


@pytest.mark.parametrize("importer", ["table", "recbole"])
def test_every_importer_applies_the_same_feedback_rule(importer: str, tmp_path: Path) -> None:
    """A label of 0 or -1 is refused (explicit negatives) unless a threshold keeps the positives,
    and a rating is reported as ignored: the table importer took such labels as positives."""
    rows = [[f"u{u}", f"i{i}", str(1 if (u + i) % 3 else -1)] for u in range(4) for i in range(5)]
    labelled = _same_rows_as(importer, tmp_path, ["user_id", "item_id", "label"], rows)
    with pytest.raises(DataError, match=r"column 'label': 7 rows hold label <= 0 \(explicit negatives; the first is .+\); "
                                        r"pass --threshold label=1 to keep only positives"):
        _import(importer, labelled)
    ds = _import(importer, labelled, {"label": 1})
    assert ds.num_interactions == 13 and ds.provenance["threshold_dropped"] == 7
    assert "positives are rows with label >= 1" in ds.provenance["feedback"]
    from slifmr.data.info import summary

    assert summary(ds)["dropped"]["threshold_dropped"] == 7  # `data info` reports it, whichever importer
    (tmp_path / "rated").mkdir()
    rated = _same_rows_as(importer, tmp_path / "rated", ["user_id", "item_id", "rating"],
                          [[u, i, "2"] for u, i, _ in rows])
    ds = _import(importer, rated)
    assert ds.num_interactions == 20 and "rating column ignored" in ds.provenance["feedback"]


def test_a_text_label_column_is_no_feedback_value(tmp_path: Path) -> None:
    """Only a numeric `label` can hold explicit negatives: a text one is left alone."""
    (tmp_path / "a.csv").write_text("user_id,item_id,label\n" + "".join(
        f"u{u},i{i},{'seen' if (u + i) % 2 else 'clicked'}\n" for u in range(4) for i in range(5)))
    assert import_table(str(tmp_path / "a.csv")).num_interactions == 20
