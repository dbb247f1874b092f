"""A dataset's split in raw ids, for another system to train on and be scored by
`slifmr evaluate-recs` under the same split (`slifmr data export-split`).

    OUT/train.parquet  OUT/valid.parquet  OUT/test.parquet     (or .csv)
        user, item: raw ids as in the dataset's source, one row per interaction, by user

The other system trains on train (and tunes on valid), writes each user's top K with a rank or
score, and `slifmr evaluate-recs LISTS --data DATA` scores them exactly as a slifmr run is
scored: the user's training (and validation) items removed, full ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from slifmr.atomic import atomic_folder
from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.errors import SlifmrError

SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


def export_split(ds: Dataset, out: str | Path, fmt: str = "parquet") -> dict[str, int]:
    """Write train/valid/test of `ds` in raw ids to the folder `out` (must not exist; written
    atomically) as Parquet or CSV; returns the rows of each split. Raises SlifmrError."""
    from slifmr.recommend import raw_ids

    if fmt not in ("parquet", "csv"):
        raise SlifmrError(f"--format must be parquet or csv, got {fmt!r}")
    out = Path(out)
    if out.exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    rows = {}
    with atomic_folder(out) as tmp:
        for name, code in SPLITS.items():
            mine = np.flatnonzero(ds.split == code)
            mine = mine[np.lexsort((ds.item[mine], ds.user[mine]))]
            table = pa.table({"user": raw_ids(ds, "users", ds.user[mine]), "item": raw_ids(ds, "items", ds.item[mine])})
            if fmt == "parquet":
                pq.write_table(table, tmp / f"{name}.parquet")
            else:
                pacsv.write_csv(table, tmp / f"{name}.csv")
            rows[name] = table.num_rows
    return rows
