"""Sorting the importer's int64 keys on every core this process owns."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PARALLEL_FROM = 1 << 20  # smaller arrays sort faster than threads start


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sort_in_place(keys: np.ndarray, workers: int | None = None) -> None:
    """Sort the 1-d array `keys` (n,) in place, as `keys.sort()` would.

    With several cores: equal slices are sorted on threads (numpy releases the GIL while it
    sorts), then one stable sort merges the sorted runs (numpy's timsort finds them, so this is
    a merge, not a sort). `workers`: threads (default: the cores this
    process may run on)."""
    k = 1 if keys.size < PARALLEL_FROM else workers or available_cores()
    if k < 2:
        keys.sort()
        return
    bounds = np.linspace(0, keys.size, k + 1).astype(np.int64)
    with ThreadPoolExecutor(k) as pool:
        list(pool.map(lambda i: keys[bounds[i] : bounds[i + 1]].sort(), range(k)))
    keys.sort(kind="stable")
