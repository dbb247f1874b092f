"""slifmr.data.encode: partitioned dictionary encoding gives exactly pyarrow's result."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from slifmr.data import encode


def _ids(rng: np.random.Generator, n: int, distinct: int) -> list[str]:
    """Ids of every length from 0 to ~40 bytes: shared prefixes and suffixes, non-ASCII."""
    pool = [""] + [f"user-{k}" for k in range(distinct // 3)] + [f"ü{k}é" for k in range(distinct // 3)] \
        + [f"https://example.com/items/{k:06d}/page" for k in range(distinct // 3)]
    return [pool[k] for k in rng.integers(0, len(pool), n)]


@pytest.mark.parametrize("workers", [1, 2])
def test_partitioned_encoding_equals_arrows(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(encode, "PARTITION_FROM", 0)  # partition even these small inputs
    monkeypatch.setattr(encode, "PARTITION_ROWS", 64)
    rng = np.random.default_rng(0)
    ids = pa.array(_ids(rng, 5000, 900))
    # chunks as a reader returns them: of different sizes, sliced out of larger buffers, one empty
    chunks = [ids.slice(0, 1700), ids.slice(1700, 0), ids.slice(1700, 2300), pa.array(ids.slice(4000).to_pylist())]
    expected = pc.dictionary_encode(pa.chunked_array(chunks))
    distinct, codes = encode.encode_strings(chunks, workers=workers)
    assert distinct.equals(expected.chunk(0).dictionary)
    assert np.array_equal(codes, encode.indices_of(expected))
    assert chunks == []  # handed over


def test_unpartitioned_path_and_empty_input() -> None:
    distinct, codes = encode.encode_strings([pa.array(["b", "a", "b"]), pa.array(["c", "a"])])
    assert distinct.to_pylist() == ["b", "a", "c"] and codes.tolist() == [0, 1, 0, 2, 1]
    distinct, codes = encode.encode_strings([])
    assert len(distinct) == 0 and codes.size == 0


def test_partition_depends_on_the_string_alone() -> None:
    """The same id lands in the same partition wherever it sits in a buffer and whatever its
    neighbours (the hash reads 8-byte windows: bytes outside the string must not count)."""
    words = ["", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi", "x" * 40, "ü"]
    for bits in (1, 7, 10):
        alone = {w: encode.partition_of(pa.array([w]), bits)[0] for w in words}
        for neighbour in ("", "zzzzzzzzzzzz", "\x01"):
            mixed = pa.array([neighbour, *words, neighbour] * 2).slice(1)
            part = encode.partition_of(mixed, bits)
            assert [int(p) for p in part[: len(words)]] == [alone[w] for w in words]
            assert int(part.max()) < 2**bits
