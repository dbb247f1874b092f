"""The MMRec evaluation split: a seeded random 8:1:1 split per user (architecture.md §3)."""

from __future__ import annotations

import numpy as np

from slifmr.data.format import TEST, TRAIN, VALID
from slifmr.data.sort import sort_in_place


def split_per_user(user: np.ndarray, seed: int, valid_ratio: float = 0.1, test_ratio: float = 0.1) -> np.ndarray:
    """Split codes (0 train, 1 valid, 2 test) for interactions grouped by `user`.

    Per user with c >= 3 interactions: max(1, round(c * ratio)) go to valid and to test, the
    rest (at least one) to train, chosen uniformly at random with `seed`. Users with fewer
    than 3 interactions keep them all in train.
    """
    n = user.shape[0]
    rng = np.random.default_rng(seed)
    order = grouped_random_order(user, rng.random(n))
    sorted_users = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    # per user, then repeated per row: the row-wise arithmetic was a third of an import's split
    n_test = np.where(counts >= 3, np.maximum(1, np.rint(counts * test_ratio)), 0).astype(np.int64)
    n_valid = np.where(counts >= 3, np.maximum(1, np.rint(counts * valid_ratio)), 0).astype(np.int64)
    n_train = counts - n_test - n_valid
    code = np.full(n, TRAIN, np.int8)
    code[rank >= np.repeat(n_train, counts)] = VALID
    code[rank >= np.repeat(n_train + n_valid, counts)] = TEST
    split = np.empty(n, np.int8)
    split[order] = code
    return split


def grouped_random_order(user: np.ndarray, r: np.ndarray) -> np.ndarray:
    """np.lexsort((r, user)) exactly (grouped by user, by r inside a user, ties by position),
    from one plain sort instead of lexsort's two indirect ones (direct sorts move less memory).

    user: (n,) int64 >= 0; r: (n,) float64 in [0, 1). Each row becomes one int64 key (user, the
    leading bits of r, position), so sorting the keys orders the rows as lexsort does wherever
    those leading bits differ; the rows whose user and leading bits tie are then put in exact
    order by a lexsort of just them. Without room for 8 bits of r, the key is user + r (float)."""
    n, user = user.size, user.astype(np.int64, copy=False)
    bits_user, bits_row = max(1, int(user.max(initial=0)).bit_length()), max(1, (n - 1).bit_length())
    bits_r = 63 - bits_user - bits_row
    if bits_r >= 8:
        key = (user << (bits_r + bits_row)) | (np.floor(r * 2.0**bits_r).astype(np.int64) << bits_row) | np.arange(n)
        sort_in_place(key)
        order = key & ((1 << bits_row) - 1)
        head = key >> bits_row  # (user, leading bits of r)
    else:
        head = user + r
        order = np.argsort(head, kind="stable")
        head = head[order]
    tie = head[1:] == head[:-1]
    if tie.any():
        at = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])  # every position in a run of equal heads
        rows = order[at]
        order[at] = rows[np.lexsort((rows, r[rows], user[rows]))]
    return order
