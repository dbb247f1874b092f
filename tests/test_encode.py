"""slifmr.data.encode: partitioned dictionary encoding gives exactly pyarrow's result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from slifmr.data import encode
from slifmr.data.format import Dataset
from slifmr.data.ids import TokenIds


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


def test_an_import_is_the_same_whether_ids_are_partitioned_or_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `import_table`: ids that differ only by surrounding whitespace are one id, the
    split and every id map are the same, and a bad id is named by the same row either way."""
    from slifmr.data import table as table_mod
    from slifmr.data.table import import_table
    from slifmr.errors import DataError

    rng = np.random.default_rng(1)
    users = [f"{' ' * int(rng.integers(0, 2))}u{k}{' ' * int(rng.integers(0, 2))}" for k in rng.integers(0, 300, 3000)]
    rows = "".join(f"{u},i{rng.integers(0, 40)},{rng.integers(1, 6)}\n" for u in users)
    (tmp_path / "good.csv").write_text("user_id,item_id,rating\n" + rows)
    (tmp_path / "bad.csv").write_text("user_id,item_id,rating\n" + rows + "u1,\t ,5\n" + rows)
    monkeypatch.setattr(table_mod, "BATCH_ROWS", 700)  # several batches

    def run() -> tuple[Dataset, str]:
        ds = import_table(str(tmp_path / "good.csv"), split="random")
        with pytest.raises(DataError) as bad:
            import_table(str(tmp_path / "bad.csv"))
        return ds, str(bad.value)

    plain, plain_error = run()
    monkeypatch.setattr(encode, "PARTITION_FROM", 0)
    monkeypatch.setattr(encode, "PARTITION_ROWS", 64)
    parted, parted_error = run()
    assert len(plain.ids["users"]) == 300 and plain.ids["users"].to_pylist()[0] == users[0].strip()
    for kind in ("users", "items"):
        assert plain.ids[kind].equals(parted.ids[kind])
    for col in ("user", "item", "split"):
        assert np.array_equal(getattr(plain, col), getattr(parted, col))
    assert plain_error == parted_error and "row 3000" in plain_error and "empty id" in plain_error


def test_no_rows_and_empty_files_encode_to_nothing(tmp_path: Path) -> None:
    """Readers yield 0-row batches (a header-only CSV, an empty Parquet file in a folder): they
    encode to no ids, and the real error is still the one reported."""
    import pyarrow.parquet as pq

    from slifmr.data.table import import_table
    from slifmr.errors import DataError

    distinct, codes = encode.encode_strings([pa.array([], pa.string()), pa.array([], pa.string())])
    assert len(distinct) == 0 and codes.size == 0
    (tmp_path / "inter.csv").write_text("user_id,item_id\nu1,i1\nu2,i2\nu1,i2\nu2,i1\nu1,i3\nu2,i3\n")
    (tmp_path / "links.csv").write_text("item_id,entity\ni1,e1\n")
    (tmp_path / "triples.csv").write_text("head,relation,tail\n")
    with pytest.raises(DataError, match="no triples"):
        import_table(str(tmp_path / "inter.csv"), kg=str(tmp_path / "triples.csv"), kg_links=str(tmp_path / "links.csv"))
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())}), tmp_path / "pq" / "a.parquet")
    pq.write_table(pa.table({"user_id": ["u1", None], "item_id": ["i1", "i2"]}), tmp_path / "pq" / "b.parquet")
    with pytest.raises(DataError, match="row 1, column 'user_id': missing id"):
        import_table(str(tmp_path / "pq"))


def test_an_encoder_runs_once() -> None:

    encoder = TokenIds()
    encoder.encode()
    with pytest.raises(RuntimeError, match="runs once"):
        encoder.encode()
