"""String ids -> contiguous codes in order of first appearance, fast at 10^8 rows.

`encode_strings` returns exactly what pyarrow's `dictionary_encode` of the whole chunked
column returns (the distinct ids in order of first appearance, each row's position among
them). Arrow fills one hash table; with millions of distinct ids that table no longer fits in
the CPU caches and each row costs a few cache misses (166-195 ns a row for 10^6 distinct user
ids on the reference machine, against 25-28 ns for 10^5 item ids: benchmarks/data/encode_ids.py).
So with many distinct ids the rows are first spread over 2^b partitions by a hash of their
bytes (equal ids always land in the same partition), each partition is dictionary-encoded on
its own, small table by Arrow on the process's cores, and the partitions' ids are numbered
again by the row of their first appearance. Measured in benchmarks/data/import_scale.py (RESULTS.md, "Importing your own data")."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slifmr.data.sort import available_cores

# Partition when the first PROBE_ROWS rows hold more than PARTITION_FROM distinct ids: ids that
# rarely repeat, so Arrow's one table would grow past the caches and hardly any row would find
# its entry there. Skewed ids (item popularity) keep a hot set in cache: one table is as fast as
# partitions on both cores (3x10^7 rows of 7x10^5 Zipf-popular items: benchmarks/data/encode_ids.py), at half the CPU.
PROBE_ROWS = 1 << 18
PARTITION_FROM = 1 << 17
PARTITION_ROWS = 1 << 17  # rows per partition aimed at
MAX_BITS = 10

_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], np.uint64)
_LOW_BYTES = np.array([(1 << (8 * t)) - 1 for t in range(8)] + [2**64 - 1], np.uint64)  # mask of the low t bytes


def partition_of(ids: pa.Array, bits: int) -> np.ndarray:
    """(n,) uint16 in [0, 2^bits): a hash of each string's length and of its first, middle and
    last (up to) 8 bytes, so a function of the string alone (never of its neighbours in the
    buffer). Ids that share those bytes share a partition: that costs speed, never correctness.

    ids: a `pa.string()` array; bits: 1..16."""
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset : ids.offset + len(ids) + 1]
    first, last = (int(offsets[0]), int(offsets[-1])) if len(ids) else (0, 0)
    offsets = offsets - first  # a slice of a batch: only its own bytes are copied
    data = np.zeros(last - first + 16, np.uint8)  # 8 bytes of padding on each side: every 8-byte window is in bounds
    if last > first:
        data[8:-8] = np.frombuffer(ids.buffers()[2], np.uint8)[first:last]
    windows = np.ndarray(shape=(data.size - 7,), dtype="<u8", buffer=data.data, strides=(1,))  # unaligned uint64 at each byte
    start, length = offsets[:-1] + 8, np.diff(offsets)
    width = np.minimum(length, 8)
    low = _LOW_BYTES[width]
    tail_at = start + length
    tail_at -= width
    middle_at = length - width
    middle_at //= 2
    middle_at += start
    # in place: a third faster than the same arithmetic allocating each step
    h = windows[start]
    h &= low
    h *= _MIX[0]
    for at, mix in ((tail_at, _MIX[1]), (middle_at, _MIX[2])):
        w = windows[at]
        w &= low
        w *= mix
        h ^= w
    h ^= length.astype(np.uint64)
    h ^= h >> np.uint64(29)
    h *= _MIX[0]
    h >>= np.uint64(64 - bits)
    return h.astype(np.uint16)


def _first_appearances(codes: np.ndarray) -> np.ndarray:
    """Positions where each code first occurs, for codes numbered in order of first appearance
    (a new code is always the largest so far plus one)."""
    highest = np.maximum.accumulate(codes)
    return np.flatnonzero(np.r_[True, highest[1:] > highest[:-1]])


Grouped = tuple[np.ndarray, np.ndarray, pa.Array]  # (order (n,), partition bounds (P + 1,), the rows in that order)


class Partition(NamedTuple):
    """One partition's ids, dictionary-encoded on their own."""

    distinct: pa.Array  # (d,) string, in order of first appearance in the partition
    codes: list[np.ndarray]  # per chunk: its rows of this partition, in row order, their codes (int32)
    first_rows: np.ndarray  # (d,) int64: where each id first appears, as a row of the whole column


def _group(chunks: list[pa.Array | None], k: int, bits: int) -> Grouped:
    """Chunk k's rows grouped by partition, in row order inside each; the chunk leaves the list."""
    chunk, chunks[k] = chunks[k], None
    part = partition_of(chunk, bits)
    order = np.argsort(part, kind="stable").astype(np.int32)  # a radix sort of 16-bit keys
    bounds = np.r_[0, np.cumsum(np.bincount(part, minlength=1 << bits))]
    return order, bounds, chunk.take(pa.array(order))


def _encode_partition(groups: Sequence[Grouped], starts: np.ndarray, p: int) -> Partition:
    """Partition p's rows, chunk after chunk, dictionary-encoded by one (small) hash table."""
    present = [k for k, (_, b, _) in enumerate(groups) if b[p + 1] > b[p]]  # Arrow's result drops empty chunks
    codes = [np.zeros(0, np.int32)] * len(groups)
    if not present:
        return Partition(pa.array([], pa.string()), codes, np.zeros(0, np.int64))
    encoded = pc.dictionary_encode(pa.chunked_array(
        [groups[k][2].slice(groups[k][1][p], groups[k][1][p + 1] - groups[k][1][p]) for k in present], pa.string()))
    for k, chunk in zip(present, encoded.chunks, strict=True):
        codes[k] = np.asarray(chunk.indices.to_numpy(zero_copy_only=False))
    rows = np.concatenate([starts[k] + groups[k][0][groups[k][1][p] : groups[k][1][p + 1]] for k in present])
    return Partition(encoded.chunk(0).dictionary, codes, rows[_first_appearances(np.concatenate([codes[k] for k in present]))])


def _write_codes(out: np.ndarray, order: np.ndarray, parts: Sequence[Partition], renumber: Sequence[np.ndarray], k: int) -> None:
    """Chunk k's final codes into `out` (its rows), from each partition's codes of its rows."""
    out[order] = np.concatenate([new[part.codes[k]] for part, new in zip(parts, renumber, strict=True)])


def indices_of(encoded: pa.ChunkedArray) -> np.ndarray:
    """The int64 codes (n,) of a dictionary-encoded chunked array whose chunks share one dictionary."""
    if encoded.num_chunks == 1:
        return np.asarray(encoded.chunk(0).indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.concatenate([np.asarray(c.indices.to_numpy(zero_copy_only=False), dtype=np.int64) for c in encoded.chunks])


def encode_strings(chunks: list[pa.Array], workers: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """(distinct ids (D,) string in order of first appearance, every row's code (n,) int64, chunk
    after chunk): what `pc.dictionary_encode(pa.chunked_array(chunks))` gives.

    chunks: `pa.string()` arrays without nulls, handed over: the list is emptied, and each array
    dropped once its rows are grouped, so that its memory goes as the grouped copies grow (at
    10^8 rows the raw ids of a column are ~1.5 GB; arrays that are slices of one buffer free it
    with the last of them); workers: threads (default: the cores this process may run on)."""
    if not chunks:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    raw: list[pa.Array | None] = list(chunks)
    chunks.clear()
    whole = pa.chunked_array(raw, pa.string())
    if len(whole) == 0:  # Arrow's result would hold no chunk to take the dictionary from
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    probe = pc.count_distinct(whole.slice(0, PROBE_ROWS)).as_py()
    if probe < PARTITION_FROM:  # one hash table that stays in cache
        encoded = pc.dictionary_encode(whole)
        return encoded.chunk(0).dictionary, indices_of(encoded)
    bits = int(np.clip(np.ceil(np.log2(len(whole) / PARTITION_ROWS)), 1, MAX_BITS))
    del whole
    starts = np.r_[0, np.cumsum([len(c) for c in raw])]

    with ThreadPoolExecutor(workers or available_cores()) as pool:
        groups = list(pool.map(lambda k: _group(raw, k, bits), range(len(raw))))
        parts = list(pool.map(lambda p: _encode_partition(groups, starts, p), range(1 << bits)))
        orders = [order for order, _, _ in groups]
        groups.clear()  # the grouped copies of the ids
        # the partitions' ids numbered again, by the row of their first appearance
        first_row = np.concatenate([part.first_rows for part in parts])
        order = np.argsort(first_row)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        bases = np.cumsum([0] + [len(part.distinct) for part in parts])
        renumber = [rank[bases[p] : bases[p + 1]] for p in range(len(parts))]
        distinct = pa.concat_arrays([part.distinct for part in parts]).take(order)
        codes = np.empty(starts[-1], np.int64)
        # chunk by chunk: each scatter stays inside one chunk's rows (in cache), not over the column
        list(pool.map(lambda k: _write_codes(codes[starts[k] : starts[k + 1]], orders[k], parts, renumber, k),
                      range(len(orders))))
    return distinct, codes
