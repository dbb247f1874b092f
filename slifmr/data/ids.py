"""The id rule every importer applies: an id is its text with surrounding whitespace stripped
('u1 ' is 'u1'); an id empty after stripping or holding a control character is refused."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

CONTROL = r"[\x00-\x1f\x7f]"


def stripped_ids(raw: pa.Array | pa.ChunkedArray) -> tuple[pa.Array | pa.ChunkedArray, pa.Array | pa.ChunkedArray]:
    """(the ids stripped, a boolean mask of the ids the rule refuses)."""
    text = pc.utf8_trim_whitespace(raw)
    return text, pc.or_(pc.equal(pc.utf8_length(text), 0), pc.match_substring_regex(text, CONTROL))


def show(value: object, limit: int = 40) -> str:
    """A raw value as an error message quotes it: its repr, cut at `limit` characters."""
    text = repr(value)
    return text[:limit] + ("..." if len(text) > limit else "")


def refused_because(raw: str) -> str:
    """Why the rule refuses the raw id `raw`, as an error message says it."""
    return f"empty id {raw!r}" if not raw.strip() else f"id {show(raw)} holds a control character"
