"""The id stage of the import pipeline (slifmr/data/pipeline.py), and the id rule every importer
applies: an id is its text with surrounding whitespace stripped ('u1 ' is 'u1') in Unicode
normal form NFC ("Zoe\u0308", as macOS writes it, is "Zo\u00eb"); an id empty after stripping
or holding a control character is refused. Every lookup of a raw id (recommend, the export's
scorer, evaluate-recs) applies the same rule (`normal_id`).

Two encodings, one per kind of source: `TokenIds` (any text or integer ids, numbered in order
of first appearance: tables, RecBole) and `IntegerIds` (non-negative integers numbered in
numeric order, or kept as they are where they index feature rows: MMRec)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slifmr.data.encode import encode_strings, indices_of
from slifmr.errors import DataError

CONTROL = r"[\x00-\x1f\x7f]"


ID_FORM = "NFC"  # canonically equivalent spellings of one id are one id


def normal_id(raw: object) -> str:
    """One raw id as the importers store it: its text, stripped, in NFC."""
    return unicodedata.normalize(ID_FORM, str(raw).strip())


def stripped_ids(raw: pa.Array | pa.ChunkedArray) -> tuple[pa.Array | pa.ChunkedArray, pa.Array | pa.ChunkedArray]:
    """(the ids stripped and in NFC, a boolean mask of the ids the rule refuses)."""
    text = pc.utf8_normalize(pc.utf8_trim_whitespace(raw), ID_FORM)
    return text, pc.or_(pc.equal(pc.utf8_length(text), 0), pc.match_substring_regex(text, CONTROL))


def show(value: object, limit: int = 40) -> str:
    """A raw value as an error message quotes it: its repr, cut at `limit` characters."""
    text = repr(value)
    return text[:limit] + ("..." if len(text) > limit else "")


def refused_because(raw: str) -> str:
    """Why the rule refuses the raw id `raw`, as an error message says it."""
    return f"empty id {raw!r}" if not raw.strip() else f"id {show(raw)} holds a control character"


class Located(Protocol):
    """A source whose rows errors can name (slifmr/data/pipeline.py's `Reader`)."""

    source: str

    def where(self, row: int) -> str: ...


def first_true(mask: np.ndarray) -> int:
    """The index of the first True of a (n,) bool mask that holds one."""
    return int(np.flatnonzero(mask)[0])


def raw_ids(table: Located, arr: pa.Array, offset: int, column: str) -> pa.Array:
    """An id column as raw text: plain strings (a string column), or dictionary-encoded with a
    string dictionary (a dictionary column as it came, its entries possibly repeated; an integer
    column, encoded here and each distinct integer written as its decimal text). Nulls are
    refused here (a null row, or a row using a null entry); trimming and the other checks run
    once per distinct id (`check_ids`)."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        if arr.null_count:
            missing = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            raise DataError(table.where(offset + first_true(missing)), "missing id", column=column)
        return arr.cast(pa.string())
    if pa.types.is_integer(arr.type):
        arr = pc.dictionary_encode(arr)
    elif not pa.types.is_dictionary(arr.type):
        raise DataError(table.source, f"ids must be strings or integers, found {arr.type}", column=column)
    values, indices = arr.dictionary, arr.indices
    if indices.null_count or values.null_count:
        missing = pc.is_null(values.take(indices)) if values.null_count else indices.is_null()
        missing = np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)
        if missing.any():  # a null entry no row uses is no missing id (`TokenIds.encode` drops it)
            raise DataError(table.where(offset + first_true(missing)), "missing id", column=column)
    if pa.types.is_integer(values.type):
        text = pc.cast(values, pa.string())
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = values.cast(pa.string())
    else:
        raise DataError(table.source, f"ids must be strings or integers, found {values.type}", column=column)
    if text.null_count:  # unused (checked above); Arrow cannot unify dictionaries holding nulls
        text = pc.fill_null(text, "")
    return pa.DictionaryArray.from_arrays(indices, text)


@dataclass(frozen=True)
class IdChunk:
    """Where a chunk of ids came from, to name the row of a bad id."""

    table: Located
    offset: int
    column: str
    position: int  # the chunk's first row among every reader's rows, to find the earliest bad id


BadId = tuple[int, DataError]  # (the row's position in its table, the error naming it)


def check_ids(tokens: pa.Array, chunks: Sequence[tuple[IdChunk, np.ndarray]]) -> tuple[pa.Array, BadId | None]:
    """(The distinct raw ids `tokens` trimmed of surrounding whitespace, the first bad one or
    None). An id is bad when empty after trimming or holding a control character; the error
    names the first row holding one, in `chunks`' order ((origin, the rows' positions in
    `tokens`))."""
    text, bad = stripped_ids(tokens)
    if pc.any(bad).as_py():
        is_bad = np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)
        for origin, codes in chunks:
            hit = is_bad[codes]
            if hit.any():
                i = first_true(hit)
                why = refused_because(tokens[int(codes[i])].as_py())
                return text, (origin.position + i, DataError(origin.table.where(origin.offset + i), why, column=origin.column))
    return text, None


class TokenIds:
    """Raw id tokens -> contiguous ids in order of first appearance, batch by batch. Ids are
    collected as they come (`raw_ids`) and encoded once, at the end: plain string columns
    row by row (`encode_strings`), else each batch's dictionary unified with the others'. Each
    distinct id is trimmed and checked once, not once per batch it appears in."""

    def __init__(self) -> None:
        self.chunks: list[pa.Array] = []
        self.lengths: list[int] = []
        self.origins: list[IdChunk] = []
        self.encoded = False

    fixed = False  # the tokens are the ids seen, renumbered over the rows an import keeps

    def add(self, table: Located, arr: pa.Array, offset: int, column: str, position: int | None = None) -> None:
        """One batch's id column (`raw_ids`' rules); `position`: the batch's first row among every
        reader's rows (default `offset`: one reader)."""
        self.chunks.append(raw_ids(table, arr, offset, column))
        self.lengths.append(len(arr))
        self.origins.append(IdChunk(table, offset, column, offset if position is None else position))

    def finish(self) -> tuple[pa.Array, np.ndarray]:
        """(tokens (T,) string, distinct; codes (n,) int64 of every added row, chunk after
        chunk); a DataError naming the first row with a bad id."""
        tokens, codes, bad = self.encode()
        if bad is not None:
            raise bad[1]
        return tokens, codes

    def split(self, codes: np.ndarray) -> list[np.ndarray]:
        """`codes` cut into the added chunks (views)."""
        return np.split(codes, np.cumsum(self.lengths)[:-1])

    def encode(self) -> tuple[pa.Array, np.ndarray, BadId | None]:
        """`finish` without raising: (tokens, codes, the first bad id or None). Call it once: the
        added chunks are handed over, and released as they are encoded."""
        if self.encoded:
            raise RuntimeError("TokenIds.encode runs once: it hands its chunks over")
        self.encoded = True
        chunks, self.chunks = self.chunks, []
        if not chunks:
            return pa.array([], pa.string()), np.zeros(0, np.int64), None
        if not any(pa.types.is_dictionary(c.type) for c in chunks):
            # every row hashed once: entries distinct, each used, in order of first appearance
            (raw, codes), distinct = encode_strings(chunks), True
        else:
            encoded = pa.chunked_array([c if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c) for c in chunks],
                                       pa.dictionary(pa.int32(), pa.string())).unify_dictionaries()
            # unifying several chunks hashes every entry into one table (Arrow's RecursiveUnifier);
            # a single chunk is returned as it came, and a foreign writer's dictionary may repeat an entry
            raw, codes, distinct = encoded.chunk(0).dictionary, indices_of(encoded), len(chunks) > 1
            del encoded
            used = np.zeros(len(raw), bool)
            used[codes] = True
            if not used.all():  # entries no row uses (a foreign writer's dictionary): neither checked nor kept
                raw, codes = raw.filter(pa.array(used)), (np.cumsum(used) - 1)[codes]
        text, bad = check_ids(raw, list(zip(self.origins, self.split(codes))))
        if distinct and pc.all(pc.equal(text, raw)).as_py():
            return raw, codes, bad
        # trimming may make two entries one ('u1 ' and 'u1'): encoded again
        merged = pc.dictionary_encode(text)
        remap = np.asarray(merged.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        return merged.dictionary, remap[codes], bad


def first_bad_id(*found: BadId | None) -> DataError | None:
    """The error of the earliest row among several columns' first bad ids (the first given wins
    a tie)."""
    rows = [f for f in found if f is not None]
    return min(rows, key=lambda f: f[0])[1] if rows else None


def first_failing(arr: pa.Array | pa.ChunkedArray, fn: Callable[[pa.Array | pa.ChunkedArray], object]) -> int:
    """Index of the first element on which `fn` (a whole-array conversion) fails: bisection
    over prefixes, so it stays vectorised (only run once a conversion has failed)."""
    lo, hi = 0, len(arr)  # fn(arr[:lo]) succeeds, fn(arr[:hi]) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            fn(arr.slice(0, mid))
            lo = mid
        except pa.ArrowException:
            hi = mid
    return lo


def integers(source: Located, arr: pa.Array, offset: int, column: str, what: str = "id") -> np.ndarray:
    """A column of non-negative integers as int64: integer typed, or text as Arrow casts it
    ('007' is 7; surrounding whitespace ignored); errors name the row and the raw value."""
    def refuse(i: int, why: str) -> DataError:
        return DataError(source.where(offset + i), why, column=column)

    if arr.null_count:
        raise refuse(first_true(np.asarray(arr.is_null().to_numpy(zero_copy_only=False))), f"empty {what}")
    if pa.types.is_integer(arr.type):
        if pa.types.is_unsigned_integer(arr.type) and len(arr) and pc.max(arr).as_py() >= 2**63:
            i = first_true(np.asarray(pc.greater_equal(arr, 2**63).to_numpy(zero_copy_only=False), dtype=bool))
            raise refuse(i, f"{what} {show(arr[i].as_py())} is not an integer in [0, 2**63)")
        x = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
        try:
            x = np.asarray(pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
        except pa.ArrowException:
            i = first_failing(text, lambda a: pc.cast(a, pa.int64()))
            raw = arr[i].as_py()
            raise refuse(i, f"empty {what}" if not str(raw).strip() else
                         f"{what} {show(raw)} is not an integer in [0, 2**63)") from None
    if (x < 0).any():
        i = first_true(x < 0)
        raise refuse(i, f"negative {what} {show(arr[i].as_py())}")
    return x


class IntegerIds:
    """Ids that are non-negative integers ('007' is 7), numbered in numeric order (a set that
    already is 0..M-1 maps to itself). With `catalogue` = n the ids index n rows (an item's
    feature row) and are kept as they are: an id >= n is refused with `beyond` (a format of raw, n and last = n - 1)."""

    def __init__(self, catalogue: int | None = None, beyond: str = "id {raw} is not below {n}") -> None:
        self.catalogue, self.beyond = catalogue, beyond
        self.fixed = catalogue is not None  # the ids are the catalogue's rows, whichever rows are kept
        self.chunks: list[np.ndarray] = []

    def add(self, source: Located, arr: pa.Array, offset: int, column: str, position: int | None = None) -> None:
        """One batch's id column: refused at the first row that is not an id (or is beyond the catalogue)."""
        x = integers(source, arr, offset, column)
        if self.catalogue is not None and (x >= self.catalogue).any():
            i = first_true(x >= self.catalogue)
            raise DataError(source.where(offset + i), self.beyond.format(raw=show(arr[i].as_py()), n=self.catalogue, last=self.catalogue - 1),
                            column=column)
        self.chunks.append(x)

    def encode(self) -> tuple[pa.Array, np.ndarray, BadId | None]:
        """(the ids in numeric order (T,) int64, each row's code (n,) int64, None): every bad id
        was refused in `add`."""
        raw = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int64)
        self.chunks = []
        if self.catalogue is not None:
            return pa.array(np.arange(self.catalogue, dtype=np.int64)), raw, None
        tokens, codes = np.unique(raw, return_inverse=True)
        return pa.array(tokens), codes.astype(np.int64).ravel(), None


def lookup(tokens: pa.Array, keys: pa.Array) -> np.ndarray:
    """Position of every key in `tokens`, -1 where absent (a pyarrow hash join)."""
    return np.asarray(pc.fill_null(pc.index_in(keys, value_set=tokens), -1).to_numpy(zero_copy_only=False), dtype=np.int64)
