"""The Gram entries of many small item neighbourhoods at once, compiled with numba.

For item j with neighbourhood N_j (k items) the ridge head needs G[N_j + {j}, N_j + {j}],
G = X^T X the item co-occurrence counts of the binary training matrix X. Forming G whole is
out of reach above a few thousand items (N^2 entries), and a sparse product per neighbourhood
spends its time converting the (M, k) slice of X (O(M) per call at 10^6 users). This kernel
counts each neighbourhood's entries from the item -> users lists directly: every (slot, user)
of the neighbourhood is visited once, and a user met in earlier slots adds one to each of those
(slot, earlier slot) pairs. Users are found again through an open-addressing hash table sized to
the neighbourhood (it stays in cache), so the cost is the neighbourhood's interactions plus its
co-occurring pairs, whatever the number of users.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def neighbourhood_grams(indptr: np.ndarray, users: np.ndarray, slots: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """(c, s, s) float32: entry [j, a, b] = |users(slots[j, a]) & users(slots[j, b])|, the
    number of users who interacted with both items (diagonal: the item's degree).

    indptr (N + 1,) int64 and users (E,) int32: X in CSC form (each item's users, no repeats),
    E < 2^31 (positions within a neighbourhood are int32); slots (c, s) int64: each row a set of
    distinct item ids. Counts are float32, exact below 2^24 users per item."""
    c, s_count = slots.shape
    out = np.zeros((c, s_count, s_count), np.float32)
    keys = np.empty(0, np.int64)
    heads = np.empty(0, np.int32)
    slot_of = np.empty(0, np.int32)
    nxt = np.empty(0, np.int32)
    for j in range(c):
        total = 0
        for s in range(s_count):
            total += indptr[slots[j, s] + 1] - indptr[slots[j, s]]
        size = 1024
        while size < 2 * total:  # load factor <= 1/2: short probes
            size *= 2
        if size > keys.size:
            keys = np.empty(size, np.int64)
            heads = np.empty(size, np.int32)
        if total > slot_of.size:
            slot_of = np.empty(total, np.int32)
            nxt = np.empty(total, np.int32)
        keys[:size] = -1
        mask = size - 1
        p = 0
        for s in range(s_count):
            a = slots[j, s]
            out[j, s, s] = indptr[a + 1] - indptr[a]
            for q in range(indptr[a], indptr[a + 1]):
                u = users[q]
                h = (u * 2654435761) & mask
                while keys[h] != -1 and keys[h] != u:
                    h = (h + 1) & mask
                if keys[h] == -1:
                    keys[h] = u
                    heads[h] = -1
                t = heads[h]  # this user's earlier (slot) visits, newest first
                while t != -1:
                    out[j, s, slot_of[t]] += 1.0
                    t = nxt[t]
                slot_of[p] = s
                nxt[p] = heads[h]
                heads[h] = p
                p += 1
        for s in range(s_count):  # the lower triangle was counted: mirror it
            for t in range(s):
                out[j, t, s] = out[j, s, t]
    return out


@numba.njit(cache=True, nogil=True)
def top_cooccurring(item_indptr: np.ndarray, item_users: np.ndarray, user_indptr: np.ndarray,
                    user_items: np.ndarray, fill: np.ndarray, k: int, start: int, stop: int) -> np.ndarray:  # pragma: no cover - compiled
    """(stop - start, k) int32: for items start..stop-1, each one's k most co-occurring other
    items (the largest G[j, a], a != j; ties by the smaller id); an item with fewer than k
    co-occurring items is filled up from `fill` (N,) (item ids, most popular first) in order,
    skipping itself and those it has. Each item's row depends on it alone, so workers can
    split the items.

    item_indptr (N + 1,) int64 and item_users (E,) int32: X in CSC form; user_indptr (M + 1,)
    int64 and user_items (E,) int32: X in CSR form. Cost: the sum over the items' users of
    their degrees (over all items: the sum over users of degree^2)."""
    n = item_indptr.size - 1
    out = np.empty((stop - start, k), np.int32)
    counts = np.zeros(n, np.int64)
    touched = np.empty(n, np.int64)
    for j in range(start, stop):
        row = j - start
        m = 0
        for q in range(item_indptr[j], item_indptr[j + 1]):
            u = item_users[q]
            for r in range(user_indptr[u], user_indptr[u + 1]):
                a = user_items[r]
                if a != j:
                    if counts[a] == 0:
                        touched[m] = a
                        m += 1
                    counts[a] += 1
        # key: count descending, then id ascending
        keys = np.empty(m, np.int64)
        for t in range(m):
            a = touched[t]
            keys[t] = -(counts[a] * (n + 1)) + a
        order = np.argsort(keys)
        take = min(k, m)
        for t in range(take):
            out[row, t] = touched[order[t]]
        f = 0
        for t in range(take, k):
            while fill[f] == j or counts[fill[f]] != 0:
                f += 1
            out[row, t] = fill[f]
            counts[fill[f]] = -1  # taken: never filled twice
            f += 1
        for t in range(m):
            counts[touched[t]] = 0
        for t in range(take, k):
            counts[out[row, t]] = 0
    return out
