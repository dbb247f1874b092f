from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny

from slifmr.data.format import TRAIN, VALID, read_dataset, write_dataset
from slifmr.errors import DataError


def test_round_trip_is_exact(tmp_path: Path) -> None:
    ds = tiny(seed=3)
    back = read_dataset(write_dataset(ds, tmp_path / "d"))
    for name in ("user", "item", "split"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name))
        assert getattr(back, name).dtype == (np.int8 if name == "split" else np.int64)
    np.testing.assert_array_equal(back.kg, ds.kg)
    np.testing.assert_array_equal(back.item_entity, ds.item_entity)
    for m, x in ds.features.items():
        np.testing.assert_array_equal(back.features[m], x)
    assert (back.num_users, back.num_items, back.num_entities) == (ds.num_users, ds.num_items, ds.num_entities)
    assert back.relation_names == ds.relation_names
    assert back.split_seed == 3


def test_write_refuses_existing_and_leaves_nothing_on_bad_data(tmp_path: Path) -> None:
    ds = tiny()
    write_dataset(ds, tmp_path / "d")
    with pytest.raises(DataError, match="already exists"):
        write_dataset(ds, tmp_path / "d")
    bad = tiny()
    bad.features["text"] = bad.features["text"].copy()
    bad.features["text"][5, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        write_dataset(bad, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_write_failure_midway_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slifmr.data.format as fmt

    def fail(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt.np, "save", fail)
    with pytest.raises(DataError, match="No space left"):
        write_dataset(tiny(), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def _mutate(path: Path, file: str, fn) -> None:  # noqa: ANN001
    t = pq.read_table(path / file)
    pq.write_table(fn(t), path / file)


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_file", r"interactions\.parquet: file is missing"),
        ("missing_column", r"column 'split': column is missing"),
        ("wrong_type", r"column 'user': expected integer ids"),
        ("out_of_range", r"column 'item', row 0: id 9999 out of range"),
        ("duplicate", r"row \d+: duplicate \(user, item\) pair"),
        ("empty_split", r"the valid split is empty"),
        ("user_without_train", r"user \d+ has no training interaction"),
        ("nan_feature", r"text\.npy: row 7, column 0: feature value inf is NaN or inf"),
        ("huge_feature", r"image\.npy: row 3, column 2: feature value 3e\+38 is beyond \+-1e\+15"),
        ("feature_rows", r"image\.npy: has shape \(39, 6\)"),
        ("kg_link_unknown_item", r"item_entity\.parquet, column 'item', row 0: links an unknown item"),
        ("kg_bad_entity", r"kg\.parquet, column 'tail', row 1: id 99999 out of range"),
        ("truncated", r"interactions\.parquet: not a readable Parquet file"),
        ("bad_split_code", r"column 'split', row 0: split 5"),
    ],
)
def test_reader_rejects_bad_input(tmp_path: Path, case: str, match: str) -> None:
    p = write_dataset(tiny(), tmp_path / "d")
    inter = "interactions.parquet"
    if case == "missing_file":
        (p / inter).unlink()
    elif case == "missing_column":
        _mutate(p, inter, lambda t: t.drop_columns(["split"]))
    elif case == "wrong_type":
        _mutate(p, inter, lambda t: t.set_column(0, "user", pa.array(t.column("user").to_numpy().astype(str))))
    elif case == "out_of_range":
        _mutate(p, inter, lambda t: t.set_column(1, "item", pa.array(np.r_[9999, t.column("item").to_numpy()[1:]])))
    elif case == "duplicate":
        _mutate(p, inter, lambda t: pa.concat_tables([t, t.slice(3, 1)]))
    elif case == "empty_split":
        _mutate(p, inter, lambda t: t.set_column(2, "split", pa.array(np.where(t.column("split").to_numpy() == VALID, 2, t.column("split").to_numpy()).astype(np.int8))))
    elif case == "user_without_train":
        def drop_train_of_user(t: pa.Table) -> pa.Table:
            u, s = t.column("user").to_numpy(), t.column("split").to_numpy()
            victim = u[s == VALID][0]
            return t.filter(pa.array(~((u == victim) & (s == TRAIN))))
        _mutate(p, inter, drop_train_of_user)
    elif case == "nan_feature":
        x = np.load(p / "features/text.npy")
        x[7, 0] = np.inf
        np.save(p / "features/text.npy", x)
    elif case == "huge_feature":  # finite in float32, but its square is not
        x = np.load(p / "features/image.npy")
        x[3, 2] = 3e38
        np.save(p / "features/image.npy", x)
    elif case == "feature_rows":
        np.save(p / "features/image.npy", np.load(p / "features/image.npy")[:-1])
    elif case == "kg_link_unknown_item":
        _mutate(p, "item_entity.parquet", lambda t: t.set_column(0, "item", pa.array(np.r_[10**6, t.column("item").to_numpy()[1:]])))
    elif case == "kg_bad_entity":
        _mutate(p, "kg.parquet", lambda t: t.set_column(2, "tail", pa.array(np.r_[t.column("tail").to_numpy()[:1], 99999, t.column("tail").to_numpy()[2:]])))
    elif case == "truncated":
        data = (p / inter).read_bytes()
        (p / inter).write_bytes(data[: len(data) // 2])
    elif case == "bad_split_code":
        _mutate(p, inter, lambda t: t.set_column(2, "split", pa.array(np.r_[5, t.column("split").to_numpy()[1:]].astype(np.int8))))
    with pytest.raises(DataError, match=match):
        read_dataset(p)
