"""The canonical on-disk dataset: a folder of Parquet files plus meta.json (architecture.md §2).

    interactions.parquet   user, item (int64, contiguous), split (int8: 0 train, 1 valid,
                           2 test), timestamp (float64, optional)
    items.parquet          item (int64) and metadata columns (title, year, genres, ...)
    features/<m>.npy       float32 (num_items, d_m), one row per item; listed in meta.json
    features/<m>.present.npy  bool (num_items,): which rows hold a real vector (absent: all;
                           a missing row is zeros)
    kg.parquet             head, relation, tail (int64 entity / relation ids)
    item_entity.parquet    item, entity (int64)
    ids/<kind>.parquet     raw id token of every contiguous id (users, items, entities)
    meta.json              counts, relation names, modalities, provenance, schema version,
                           split seed

`write_dataset` writes a folder atomically (a temporary sibling, then one rename), so a
dataset folder is either complete or absent. `read_dataset` validates everything and
raises `DataError` naming the file, column and row of the first problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slifmr.atomic import atomic_folder
from slifmr.data.sort import sort_in_place
from slifmr.errors import DataError

SCHEMA_VERSION = 1
TRAIN, VALID, TEST = 0, 1, 2
# Feature values beyond this magnitude are refused: the model squares and sums them in float32
# (cosine kNN, projections), and float32 overflows at 3.4e38, so +-1e15 keeps every square and
# every sum of up to 10^8 squares finite. Real embeddings are many orders of magnitude smaller.
FEATURE_LIMIT = 1e15


@dataclass
class Dataset:
    """A recommendation dataset in memory: plain numpy arrays, contiguous int64 ids.

    user, item: (I,) int64 interaction endpoints; split: (I,) int8; timestamp: (I,) or None.
    features: modality name -> (num_items, d_m) float32; feature_present: modality name ->
    (num_items,) bool, the rows that hold a vector (a modality absent here covers every item).
    kg: (T, 3) int64 (head, relation, tail) over `num_entities` entities and `relation_names`;
    item_entity: (L, 2) int64. ids: kind -> raw id of every contiguous id (numpy or pyarrow
    array of strings).
    """

    name: str
    num_users: int
    num_items: int
    user: np.ndarray
    item: np.ndarray
    split: np.ndarray
    timestamp: np.ndarray | None = None
    items: pa.Table | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)
    feature_present: dict[str, np.ndarray] = field(default_factory=dict)
    kg: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    item_entity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    num_entities: int = 0
    relation_names: list[str] = field(default_factory=list)
    ids: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    split_seed: int | None = None
    digest: str | None = None  # content_digest(); written into meta.json, computed when absent

    @property
    def num_interactions(self) -> int:
        return int(self.user.shape[0])

    def split_mask(self, split: int) -> np.ndarray:
        return self.split == split

    def edges(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of one split."""
        mask = self.split == split
        return self.user[mask], self.item[mask]

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records to refuse being resumed, evaluated or served on a different
        dataset: counts, and the digest of the id maps, the interactions and the split."""
        if self.digest is None:
            self.digest = content_digest(self)
        return {
            "digest": self.digest,
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.num_interactions,
            "num_train": int((self.split == TRAIN).sum()),
            "num_entities": self.num_entities,
            "num_triples": int(self.kg.shape[0]),
            "modalities": sorted(self.features),
        }

    def present(self, modality: str) -> np.ndarray:
        """(num_items,) bool: the items whose `modality` row is a real vector."""
        mask = self.feature_present.get(modality)
        return np.ones(self.num_items, bool) if mask is None else mask


def content_digest(ds: Dataset) -> str:
    """sha256 of what ties a model's rows to data: every id map (raw id of each contiguous id),
    the (user, item, split) columns and every modality's name, shape and values (adding a
    modality makes a new fingerprint). The same rows imported in another order give other
    contiguous ids, hence another digest."""
    h = hashlib.sha256(f"{ds.num_users} {ds.num_items}".encode())
    for col in (ds.user, ds.item, ds.split):
        h.update(np.ascontiguousarray(col, dtype=np.int64).tobytes())
    for kind in sorted(ds.ids):
        h.update(f"\n{kind}\n".encode())
        tokens = id_array(ds.ids[kind])
        for buf in tokens.buffers()[1:]:  # offsets and characters of the string array
            h.update(memoryview(buf))
    for name in sorted(ds.features):
        x = ds.features[name]
        h.update(f"\nfeature {name} {tuple(x.shape)}\n".encode())
        for start in range(0, x.shape[0], 65536):
            h.update(np.ascontiguousarray(x[start : start + 65536], dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(ds.present(name)).tobytes())
    return h.hexdigest()


def id_array(raw: Any) -> pa.Array:
    """Raw ids (numpy array or pyarrow array) as one pyarrow string array with zero offset."""
    arr = raw if isinstance(raw, pa.Array | pa.ChunkedArray) else pa.array(np.asarray(raw).astype(str))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.string())
    return pa.concat_arrays([arr]) if arr.offset else arr


# ----------------------------------------------------------------------------- writing


def _write_table(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def refuse_existing(out: str | os.PathLike, overwrite: bool) -> Path:
    """`out` as a Path; DataError if it exists and `overwrite` is off (an importer checks
    before its work, and the writer again)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(str(out), "already exists (choose another --out or remove it)")
    return out


def write_dataset(ds: Dataset, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate `ds` and write it to folder `out` atomically; returns the folder."""
    validate(ds)
    out = refuse_existing(out, overwrite)
    try:
        with atomic_folder(out) as tmp:  # overwrite: the old folder goes once the new one is in place
            _write_dataset_files(ds, tmp)
    except OSError as e:
        raise DataError(str(out), f"could not write dataset: {e.strerror or e}") from e
    return out


def _write_dataset_files(ds: Dataset, tmp: Path) -> None:
    # the fingerprint (sha256, which releases the GIL) is hashed while Arrow writes the files,
    # so large imports do not pay for it after the write
    with ThreadPoolExecutor(1) as pool:
        fingerprint = pool.submit(content_digest, ds)
        _write_tables(ds, tmp)
        _write_meta(ds, tmp, fingerprint.result())


def _write_tables(ds: Dataset, tmp: Path) -> None:
    cols = {"user": ds.user, "item": ds.item, "split": ds.split.astype(np.int8)}
    if ds.timestamp is not None:
        cols["timestamp"] = ds.timestamp.astype(np.float64)
    _write_table(pa.table(cols), tmp / "interactions.parquet")
    if ds.items is not None:
        _write_table(ds.items, tmp / "items.parquet")
    (tmp / "features").mkdir()
    for name, x in ds.features.items():
        np.save(tmp / "features" / f"{name}.npy", np.ascontiguousarray(x, dtype=np.float32))
        if name in ds.feature_present and not ds.feature_present[name].all():
            np.save(tmp / "features" / f"{name}.present.npy", np.asarray(ds.feature_present[name], bool))
    _write_table(
        pa.table({"head": ds.kg[:, 0], "relation": ds.kg[:, 1], "tail": ds.kg[:, 2]}),
        tmp / "kg.parquet",
    )
    _write_table(
        pa.table({"item": ds.item_entity[:, 0], "entity": ds.item_entity[:, 1]}),
        tmp / "item_entity.parquet",
    )
    (tmp / "ids").mkdir()
    for kind, raw in ds.ids.items():
        _write_table(pa.table({"raw_id": id_array(raw)}), tmp / "ids" / f"{kind}.parquet")


def _write_meta(ds: Dataset, tmp: Path, fingerprint: str) -> None:
    meta = {
        "schema_version": SCHEMA_VERSION,
        "name": ds.name,
        "num_users": ds.num_users,
        "num_items": ds.num_items,
        "num_interactions": ds.num_interactions,
        "num_entities": ds.num_entities,
        "num_triples": int(ds.kg.shape[0]),
        "relation_names": list(ds.relation_names),
        "modalities": {n: {"file": f"features/{n}.npy", "dim": int(x.shape[1]),
                           "coverage": float(ds.present(n).mean())} for n, x in ds.features.items()},
        "ids": sorted(ds.ids),
        "split_seed": ds.split_seed,
        "provenance": ds.provenance,
        "fingerprint": fingerprint,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


# ----------------------------------------------------------------------------- reading


def _read_table(path: Path, columns: list[str], optional: bool = False) -> pa.Table | None:
    if not path.exists():
        if optional:
            return None
        raise DataError(str(path), "file is missing")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(str(path), f"not a readable Parquet file ({str(e).splitlines()[0]})") from e
    for col in columns:
        if col not in table.column_names:
            raise DataError(str(path), "column is missing", column=col)
    return table


def _int_column(table: pa.Table, path: Path, col: str) -> np.ndarray:
    arr = table.column(col)
    if not pa.types.is_integer(arr.type):
        raise DataError(str(path), f"expected integer ids, found {arr.type}", column=col)
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(str(path), "missing value", column=col, row=row)
    return arr.to_numpy().astype(np.int64, copy=False)


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate a dataset folder written by `write_dataset`."""
    root = Path(path)
    meta_path = root / "meta.json"
    if not root.is_dir():
        raise DataError(str(root), "dataset folder does not exist")
    if not meta_path.exists():
        raise DataError(str(meta_path), "file is missing (not a slifmr dataset folder?)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(str(meta_path), f"invalid JSON ({e.msg}, line {e.lineno})") from e
    for key in ("schema_version", "num_users", "num_items", "num_entities", "relation_names"):
        if key not in meta:
            raise DataError(str(meta_path), f"key '{key}' is missing")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise DataError(
            str(meta_path), f"schema version {meta['schema_version']} is not supported (expected {SCHEMA_VERSION})"
        )

    p = root / "interactions.parquet"
    inter = _read_table(p, ["user", "item", "split"])
    ts = None
    if "timestamp" in inter.column_names:
        ts = inter.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
    items_table = _read_table(root / "items.parquet", ["item"], optional=True)

    features, present = {}, {}
    for name, spec in meta.get("modalities", {}).items():
        fp = root / spec["file"]
        if not fp.exists():
            raise DataError(str(fp), "feature file is missing")
        try:
            features[name] = np.load(fp, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(str(fp), f"not a readable .npy array ({e})") from e
        mask_path = fp.with_name(f"{name}.present.npy")
        if mask_path.exists():
            try:
                present[name] = np.asarray(np.load(mask_path, allow_pickle=False), dtype=bool)
            except (ValueError, OSError) as e:
                raise DataError(str(mask_path), f"not a readable .npy array ({e})") from e

    kp = root / "kg.parquet"
    kg_table = _read_table(kp, ["head", "relation", "tail"], optional=True)
    kg = np.zeros((0, 3), np.int64)
    if kg_table is not None:
        kg = np.stack([_int_column(kg_table, kp, c) for c in ("head", "relation", "tail")], axis=1)
    lp = root / "item_entity.parquet"
    link_table = _read_table(lp, ["item", "entity"], optional=True)
    links = np.zeros((0, 2), np.int64)
    if link_table is not None:
        links = np.stack([_int_column(link_table, lp, c) for c in ("item", "entity")], axis=1)

    ids = {}
    for kind in meta.get("ids", []):
        t = _read_table(root / "ids" / f"{kind}.parquet", ["raw_id"])
        ids[kind] = t.column("raw_id").to_numpy(zero_copy_only=False)

    ds = Dataset(
        name=meta.get("name", root.name),
        num_users=int(meta["num_users"]),
        num_items=int(meta["num_items"]),
        user=_int_column(inter, p, "user"),
        item=_int_column(inter, p, "item"),
        split=_int_column(inter, p, "split").astype(np.int8),
        timestamp=ts,
        items=items_table,
        features=features,
        feature_present=present,
        kg=kg,
        item_entity=links,
        num_entities=int(meta["num_entities"]),
        relation_names=list(meta["relation_names"]),
        ids=ids,
        provenance=meta.get("provenance", {}),
        split_seed=meta.get("split_seed"),
        digest=meta.get("fingerprint"),  # absent in folders written before it existed: computed
    )
    validate(ds, root)
    return ds


# ----------------------------------------------------------------------------- validation


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_feature_values(x: np.ndarray, path: str | os.PathLike, chunk_rows: int = 65536) -> None:
    """Refuse a feature matrix (N, d) holding NaN, inf or a value beyond +-FEATURE_LIMIT.

    Raises DataError naming `path`, the row (item, 0-based), the column (dimension) and the
    raw value. Works in row chunks, so a memory-mapped matrix is never copied whole."""
    for start in range(0, x.shape[0], chunk_rows):
        block = np.asarray(x[start : start + chunk_rows], dtype=np.float64)
        bad = ~(np.abs(block) <= FEATURE_LIMIT)  # NaN compares False: caught here too
        if bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            v = float(block[r, c])
            why = "is NaN or inf" if not np.isfinite(v) else f"is beyond +-{FEATURE_LIMIT:.0e} (float32 arithmetic would overflow)"
            raise DataError(str(path), f"row {start + r}, column {c}: feature value {v:.7g} {why}")


def validate(ds: Dataset, root: Path | None = None) -> None:
    """Check every invariant of architecture.md §2; raise DataError on the first violation."""
    r = root or Path(f"<{ds.name}>")
    p = r / "interactions.parquet"
    n = ds.num_interactions
    if n == 0:
        raise DataError(str(p), "no interactions")
    if not (ds.item.shape == ds.split.shape == (n,)):
        raise DataError(str(p), "user, item and split columns differ in length")
    for col, ids, bound in (("user", ds.user, ds.num_users), ("item", ds.item, ds.num_items)):
        bad = (ids < 0) | (ids >= bound)
        if bad.any():
            i = _first(bad)
            raise DataError(str(p), f"id {ids[i]} out of range [0, {bound})", column=col, row=i)
    bad = (ds.split < TRAIN) | (ds.split > TEST)
    if bad.any():
        i = _first(bad)
        raise DataError(str(p), f"split {ds.split[i]} is not 0 (train), 1 (valid) or 2 (test)", column="split", row=i)
    key = ds.user * np.int64(ds.num_items) + ds.item
    ordered = key.copy()
    sort_in_place(ordered)  # an unstable sort detects; the stable one below only names the row
    if (ordered[1:] == ordered[:-1]).any():
        order = np.argsort(key, kind="stable")
        dup = np.flatnonzero(key[order][1:] == key[order][:-1])
        i = int(order[dup[0] + 1])
        raise DataError(str(p), f"duplicate (user, item) pair ({ds.user[i]}, {ds.item[i]})", column="item", row=i)
    del ordered
    for s, name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        if not (ds.split == s).any():
            raise DataError(str(p), f"the {name} split is empty", column="split")
    has_train = np.zeros(ds.num_users, bool)
    has_train[ds.user[ds.split == TRAIN]] = True
    if not has_train.all():
        u = _first(~has_train)
        i = _first(ds.user == u) if (ds.user == u).any() else None
        raise DataError(str(p), f"user {u} has no training interaction", column="user", row=i)

    for name, x in ds.features.items():
        fp = r / "features" / f"{name}.npy"
        if x.ndim != 2 or x.shape[0] != ds.num_items:
            raise DataError(str(fp), f"has shape {tuple(x.shape)}, expected ({ds.num_items}, d): one row per item")
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(str(fp), f"dtype {x.dtype} is not floating point")
        check_feature_values(x, fp)
        mask = ds.feature_present.get(name)
        if mask is not None and (mask.shape != (ds.num_items,) or mask.dtype != bool):
            raise DataError(str(fp.with_name(f"{name}.present.npy")), f"has shape {mask.shape} and dtype {mask.dtype}, "
                            f"expected ({ds.num_items},) bool")

    kp = r / "kg.parquet"
    for j, (col, bound) in enumerate(
        (("head", ds.num_entities), ("relation", len(ds.relation_names)), ("tail", ds.num_entities))
    ):
        bad = (ds.kg[:, j] < 0) | (ds.kg[:, j] >= bound)
        if bad.any():
            i = _first(bad)
            raise DataError(str(kp), f"id {ds.kg[i, j]} out of range [0, {bound})", column=col, row=i)
    lp = r / "item_entity.parquet"
    for j, (col, bound) in enumerate((("item", ds.num_items), ("entity", ds.num_entities))):
        bad = (ds.item_entity[:, j] < 0) | (ds.item_entity[:, j] >= bound)
        if bad.any():
            i = _first(bad)
            what = "links an unknown item" if col == "item" else "links an unknown entity"
            raise DataError(str(lp), f"{what}: id {ds.item_entity[i, j]} out of range [0, {bound})", column=col, row=i)
    if ds.item_entity.shape[0]:
        _, first_idx, counts = np.unique(ds.item_entity[:, 0], return_index=True, return_counts=True)
        if (counts > 1).any():
            dup_item = int(np.unique(ds.item_entity[:, 0])[counts > 1][0])
            rows = np.flatnonzero(ds.item_entity[:, 0] == dup_item)
            raise DataError(str(lp), f"item {dup_item} is linked to more than one entity", column="item", row=int(rows[1]))
