"""Repeated (user, item) pairs: every importer keeps the same row of each pair, the first in
the earliest split (train, valid, test), then in row order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slifmr.data.sort import sort_in_place


def min_per_key(key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """The smallest `value` of each distinct `key` (both (n,) int64 >= 0), in no given order.
    When (key, value) packs into one int64 this is one plain sort (a direct sort moves less
    memory than an argsort). Else the keys alone are sorted, and only the rows whose key repeats
    are sorted indirectly (an argsort of every row is the slow path; repeats are usually few). pyarrow's hash
    aggregation was slower than either at millions of distinct keys."""
    if key.size == 0:
        return key.copy()
    span = int(value.max()) + 1
    if int(key.max()) < (2**63 - 1) // span:
        packed = key * span
        packed += value
        sort_in_place(packed)
        keys = packed // span
        first = np.r_[True, keys[1:] != keys[:-1]]
        del keys
        return packed[first] % span
    ordered = key.copy()
    sort_in_place(ordered)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]  # sorted: each repeated key once or more
    del ordered
    if repeated.size == 0:
        return value.copy()
    repeated = repeated[np.r_[True, repeated[1:] != repeated[:-1]]]
    hit = np.asarray(pc.is_in(key, value_set=pa.array(repeated)).to_numpy(zero_copy_only=False), dtype=bool)
    key, single, value = key[hit], value[~hit], value[hit]
    order = np.argsort(key)
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return np.concatenate([single, np.minimum.reduceat(value[order], starts)])


def first_rows(key: np.ndarray, rank: np.ndarray, rows: int) -> np.ndarray:
    """(rows,) bool: the row of each key with the smallest rank, where `rank` % `rows` is the
    row (rank = split * rows + row keeps the earliest split first, then the first row)."""
    first = np.zeros(rows, bool)
    first[min_per_key(key, rank) % rows] = True
    return first
