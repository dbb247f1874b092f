"""The one import pipeline every importer feeds: raw rows -> ids -> feedback rule -> repeated
pairs -> split -> checks -> `Interactions`.

An importer is a reader of its format (a `Reader`: Parquet / CSV tables in
slifmr/data/table.py, RecBole's and MMRec's tab-separated files in slifmr/data/recbole.py)
plus the choice of two stages: how ids are numbered (slifmr/data/ids.py: `TokenIds` in order
of first appearance, or MMRec's `IntegerIds`) and how rows are split (`Split`). Everything
between is this module, so every importer gets the same rules by construction:

* ids: stripped, refused when empty or holding a control character (slifmr/data/ids.py);
* feedback: every row is a positive unless thresholds keep rows with COL >= VALUE; a `label`
  holding values <= 0 is refused without one (slifmr/data/feedback.py);
* repeated (user, item) pairs keep their first row, in the earliest given split
  (slifmr/data/pairs.py), and the import warns with one of them;
* splits: a given one (a split column, or one file per split) kept exactly, or computed
  ("random" per-user 8:1:1, "temporal" leave-last-out, "global-temporal" time quantiles);
* checks: each split keeps a row and every user has a training row; each error names the
  source, the row (its line in text files) and the column;
* the catalogue: users and items with a kept interaction, numbered again over those (unless
  the ids index feature rows: `IntegerIds(catalogue=n)` keeps all n).

Rows stream in record batches; nothing loops over rows in Python."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from slifmr import log
from slifmr.data.feedback import FeedbackRule, rule_text
from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.data.ids import IntegerIds, TokenIds, first_bad_id, first_true, integers, show
from slifmr.data.pairs import first_rows
from slifmr.data.split import split_per_user
from slifmr.errors import DataError, SlifmrError

SPLIT_RULES = ("random", "temporal", "global-temporal", "column")
SPLIT_SOURCES = {
    "random": "per-user random 8:1:1 (MMRec, FREEDOM)",
    "temporal": "per-user temporal leave-last-out (SASRec, NCF)",
    "global-temporal": "global temporal cut at the 80% / 90% time quantiles (Meng et al., RecSys 2020)",
    "column": "the source's split column",
    "files": "the source's split files",
}
SPLIT_NAMES = ("train", "valid", "test")
TIME_HINT = "timestamps must be numbers of seconds such as Unix time: convert dates first, or drop the column"
SPLIT_VALUES = {"train": TRAIN, "valid": VALID, "validation": VALID, "test": TEST, "0": TRAIN, "1": VALID, "2": TEST}


class Reader(Protocol):
    """Rows of one source, in record batches, that can name a row in an error."""

    source: str

    @property
    def columns(self) -> list[str]: ...

    def require(self, *columns: str, named_by: str = "") -> None:
        """DataError unless every column is there (`named_by`: which option asked for it)."""

    def batches(self, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(offset of the batch's first row, batch), in row order."""

    def where(self, row: int) -> str:
        """The location of row `row` as errors name it (file, row or line)."""

    def row_named(self, row: int) -> tuple[str, str]:
        """(an error's location, the row as its message says it), for a row found after reading."""

    def cell(self, column: str, row: int) -> object:
        """The raw value of one cell (error path: may read the source again)."""

    def numbers(self, arr: pa.Array, offset: int, column: str, hint: str = "") -> np.ndarray:
        """A numeric column of a batch as finite float64."""

    def feedback_columns(self) -> list[str]:
        """The columns that may hold explicit feedback values."""


@dataclass
class InteractionColumns:
    """Column names of the interactions."""

    user: str = "user_id"
    item: str = "item_id"
    time: str | None = None
    split: str | None = None
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    """How rows are split: `rule` one of SPLIT_RULES or "files" (reader k is split k: a pre-split
    set). `codes` reads a split column: "names" (train / valid / test, or 0 / 1 / 2) or
    "integers" (0, 1, 2 only). `values`: how the source spells the three splits, and `hint`: the
    importer's advice when a computed split leaves valid and test empty, both for messages."""

    rule: str = "random"
    seed: int = 2026
    codes: str = "names"
    values: tuple[str, str, str] = ("train", "valid", "test")
    hint: str = ""


@dataclass
class Interactions:
    """Imported interactions: contiguous users (n,) and items (n,) int64, split codes (n,) int8,
    timestamps (n,) float64 seconds or None, the raw ids of users and items (their tokens, by
    contiguous id), notes for the provenance, and warnings to print once the import has passed."""

    user: np.ndarray
    item: np.ndarray
    split: np.ndarray
    timestamp: np.ndarray | None
    users: pa.Array
    items: pa.Array
    notes: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """What the import read and dropped (rows, duplicates_dropped, cold_rows_dropped)."""
        return {k: v for k, v in self.notes.items() if k not in ("split", "feedback", "feedback_log")}

    def to_dataset(self, name: str, provenance: dict[str, Any], ids: dict[str, Any] | None = None,
                   **fields: Any) -> Dataset:
        """The `Dataset` of these interactions (not yet written): counts, arrays, raw ids (`ids`
        replaces or adds kinds), provenance (`provenance`, then the split rule, the feedback
        rule and provenance["import"]: what was read and dropped), and the other `fields`
        (features, kg, items...)."""
        return Dataset(name=name, num_users=len(self.users), num_items=len(self.items), user=self.user,
                       item=self.item, split=self.split, timestamp=self.timestamp,
                       ids={"users": self.users, "items": self.items, **(ids or {})},
                       provenance={**provenance, "split": self.notes["split"], **self.notes["feedback"],
                                   "import": self.counts}, **fields)


def emit(warnings: Sequence[str], infos: Sequence[str] = ()) -> None:
    """Log what the import decided, once it has passed every check (a refused import prints one line)."""
    for msg in infos:
        log.info(msg)
    for msg in warnings:
        log.warning(msg)


def check_split_options(split: str, cols: InteractionColumns) -> None:
    """The split rule and its columns agree (SlifmrError naming the flags)."""
    if split not in SPLIT_RULES:
        raise SlifmrError(f"--split {split!r}: choose one of {', '.join(SPLIT_RULES)}")
    if split == "column" and not cols.split:
        raise SlifmrError("--split column needs --split-col (the column holding train / valid / test)")
    if cols.split and split != "column":  # the column would have to exist, then go unused
        raise SlifmrError(f"--split-col {cols.split} with --split {split}: the column's split would not be used; "
                          "drop --split (the column then is the split) or drop --split-col")
    if split in ("temporal", "global-temporal") and not cols.time:
        raise SlifmrError(f"--split {split} needs --time-col (the interactions' timestamps)")


def split_codes(reader: Reader, arr: pa.Array, offset: int, column: str, codes: str) -> np.ndarray:
    """A split column of a batch as int8 TRAIN / VALID / TEST."""
    if codes == "integers":
        x = integers(reader, arr, offset, column, what=column)
        if (x > TEST).any():
            i = first_true(x > TEST)
            raise DataError(reader.where(offset + i), f"{column} {show(arr[i].as_py())} is not 0 (train), 1 (valid) "
                            "or 2 (test)", column=column)
        return x.astype(np.int8)
    text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(arr, pa.string())))
    found = np.asarray(pc.fill_null(pc.index_in(text, value_set=pa.array(list(SPLIT_VALUES))), -1)
                       .to_numpy(zero_copy_only=False), dtype=np.int64)
    if (found < 0).any():
        i = first_true(found < 0)
        raise DataError(reader.where(offset + i), f"split {show(arr[i].as_py())} is not train, valid or test "
                        "(or 0, 1, 2)", column=column)
    return np.asarray(list(SPLIT_VALUES.values()), np.int8)[found]


def per_user_temporal(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Leave-last-out: each user's latest interaction is test, the one before valid (ties: the
    later row is later); users with fewer than 3 interactions keep them all in train."""
    n = user.size
    order = np.lexsort((np.arange(n), ts, user))
    u = user[order]
    last = np.r_[u[1:] != u[:-1], True]
    second = np.r_[last[1:], False] & ~last
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.repeat(np.diff(np.r_[starts, n]), np.diff(np.r_[starts, n]))
    code = np.full(n, TRAIN, np.int8)
    code[last & (counts >= 3)] = TEST
    code[second & (counts >= 3)] = VALID
    split = np.empty(n, np.int8)
    split[order] = code
    return split


def global_temporal(ts: np.ndarray) -> np.ndarray:
    """Every interaction after the 90% time quantile is test, after the 80% valid."""
    lo, hi = np.quantile(ts, [0.8, 0.9])
    return np.where(ts > hi, TEST, np.where(ts > lo, VALID, TRAIN)).astype(np.int8)


def _compact(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes renumbered 0.. over the values present (their order kept), and those values."""
    present = np.zeros(n, bool)
    present[codes] = True
    new = np.cumsum(present) - 1
    return new[codes].astype(np.int64), np.flatnonzero(present)


@dataclass
class _Read:
    """What reading every batch of every reader gave, before ids are encoded."""

    keep: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)
    given: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # per reader
    kept: list[int] = field(default_factory=list)  # per reader, by the feedback rule
    split_rows: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # per given split
    split_kept: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))  # per given split, by the rule


def _read(readers: Sequence[Reader], cols: InteractionColumns, split: Split, feedback: FeedbackRule,
          users: TokenIds | IntegerIds, items: TokenIds | IntegerIds) -> _Read:
    out = _Read()
    position = 0
    for k, reader in enumerate(readers):
        mine = [c for c in feedback.columns if c in reader.columns]
        names = [cols.user, cols.item] + [c for c in (cols.time, cols.split) if c] + mine
        rows = kept = 0
        for offset, batch in reader.batches(list(dict.fromkeys(names))):
            users.add(reader, batch.column(cols.user), offset, cols.user, position + offset)
            items.add(reader, batch.column(cols.item), offset, cols.item, position + offset)
            if cols.split and split.rule == "column":
                out.given.append(split_codes(reader, batch.column(cols.split), offset, cols.split, split.codes))
            elif split.rule == "files":
                out.given.append(np.full(batch.num_rows, k, np.int8))
            if cols.time:
                out.times.append(reader.numbers(batch.column(cols.time), offset, cols.time, TIME_HINT))
            values = {c: reader.numbers(batch.column(c), offset, c) for c in mine}
            out.keep.append(feedback.keep(batch.num_rows, values, lambda i, r=reader, o=offset: r.row_named(o + i)))
            if out.given:
                out.split_rows += np.bincount(out.given[-1], minlength=3)[:3]
                out.split_kept += np.bincount(out.given[-1][out.keep[-1]], minlength=3)[:3]
            rows += batch.num_rows
            kept += int(out.keep[-1].sum())
        out.rows.append(rows)
        out.kept.append(kept)
        position += rows
    return out


def read_interactions(readers: Sequence[Reader], cols: InteractionColumns, split: Split,
                      users: TokenIds | IntegerIds | None = None, items: TokenIds | IntegerIds | None = None
                      ) -> Interactions:
    """The pipeline (module docstring) over `readers` (one source, or the three files of a
    pre-split set with `split.rule == "files"`); `users` / `items`: the id stages (default
    `TokenIds`). Raises DataError naming the source, row and column of the first bad value,
    SlifmrError on options that contradict each other."""
    if split.rule != "files":
        check_split_options(split.rule, cols)
    elif len(readers) != 3:
        raise SlifmrError("a pre-split set is three sources: train, valid and test")
    thresholds = cols.thresholds
    for col, v in thresholds.items():
        for reader in readers:
            reader.require(col, named_by=f" named by --threshold {col}={v:g}")
    id_columns = tuple(c for c in (cols.user, cols.item, cols.split) if c)
    feedback = FeedbackRule(thresholds, id_columns, list(dict.fromkeys(c for r in readers for c in r.feedback_columns())))
    users, items = users or TokenIds(), items or TokenIds()
    try:
        read = _read(readers, cols, split, feedback, users, items)
    except DataError as e:
        # ids are checked once, after reading: a bad id up to this batch is named first, as a
        # batch-by-batch check would have
        id_error = first_bad_id(users.encode()[2], items.encode()[2])
        raise (id_error or e) from None
    # side by side: one column's encoding often runs on one core (`encode_strings`)
    with ThreadPoolExecutor(2) as pool:
        (user_tokens, user, user_bad), (item_tokens, item, item_bad) = pool.map(lambda ids: ids.encode(), (users, items))
    # Arrow's allocator (mimalloc) keeps freed pages; numpy's arrays from here on could not reuse
    # them (at 10^8 rows: 8.0 -> 6.2 GB resident in what follows)
    pa.default_memory_pool().release_unused()
    id_error = first_bad_id(user_bad, item_bad)
    if id_error is not None:
        raise id_error
    total = sum(read.rows)
    if split.rule != "files":  # a pre-split set names the empty file (`_check_splits`)
        if total == 0:
            raise DataError(readers[0].source, "has no data rows")
        if not any(read.kept):
            raise DataError(readers[0].source, f"--threshold {rule_text(thresholds)} keeps none of its {total:,} rows")
    kept = np.concatenate(read.keep) if read.keep else np.zeros(0, bool)
    ts = np.concatenate(read.times) if read.times else None
    given_split = split.rule in ("column", "files")
    given = np.concatenate(read.given) if read.given else np.zeros(0, np.int8) if given_split else None
    del read.keep, read.times, read.given
    notes: dict[str, Any] = {"rows": total, "split": SPLIT_SOURCES[split.rule]}
    notes["feedback"], _, notes["feedback_log"] = feedback.summary()  # refuses explicit negatives
    # one row per (user, item): the first, in the earliest given split
    candidates = np.flatnonzero(kept)
    pair = user[candidates]  # in place from here: each fresh 10^8-row temporary costs page faults
    pair *= max(len(item_tokens), 1)
    pair += item[candidates]
    rank = candidates if given is None else given[candidates].astype(np.int64) * max(total, 1) + candidates
    del candidates
    first = first_rows(pair, rank, total)  # the kept rows in the sources' order, without a sort
    del pair, rank
    warnings = []
    repeats = int(kept.sum()) - int(first.sum())
    notes["duplicates_dropped"] = repeats
    if repeats:
        j = first_true(kept & ~first)
        reader, _ = _locate(readers, read.rows, j)
        earliest = " in the earliest split" if given is not None else ""
        warnings.append(f"{reader.source}: dropped {repeats:,} duplicate (user, item) rows, keeping the first{earliest} "
                        f"(user {show(str(user_tokens[int(user[j])].as_py()))}, item "
                        f"{show(str(item_tokens[int(item[j])].as_py()))} is one)")
    del kept
    rows = np.flatnonzero(first)
    del first
    user, item = user[rows], item[rows]
    ts = ts[rows] if ts is not None else None
    if given is not None:
        codes = given[rows]
    elif split.rule == "random":
        codes = split_per_user(user, split.seed)
    elif split.rule == "temporal":
        codes = per_user_temporal(user, ts)
    else:
        codes = global_temporal(ts)
        has_train = np.zeros(len(user_tokens), bool)
        has_train[user[codes == TRAIN]] = True
        stay = has_train[user]
        notes["cold_rows_dropped"] = int((~stay).sum())
        user, item, codes, rows = user[stay], item[stay], codes[stay], rows[stay]
        ts = ts[stay]
    _check_splits(readers, cols, split, read, codes, user, rows, user_tokens)
    del rows
    # contiguous ids over what is left, in order of first appearance
    user, users_kept = _compact(user, len(user_tokens))
    if not items.fixed:
        item, items_kept = _compact(item, len(item_tokens))
        item_tokens = item_tokens.take(pa.array(items_kept))
    return Interactions(user, item, codes, ts, user_tokens.take(pa.array(users_kept)), item_tokens, notes, warnings)


def _locate(readers: Sequence[Reader], rows: Sequence[int], row: int) -> tuple[Reader, int]:
    """(the reader, its row) of row `row` among every reader's rows."""
    k = int(np.searchsorted(np.cumsum(rows), row, side="right"))
    return readers[k], row - sum(rows[:k])


def _check_splits(readers: Sequence[Reader], cols: InteractionColumns, split: Split, read: _Read,
                  codes: np.ndarray, user: np.ndarray, rows: np.ndarray, user_tokens: pa.Array) -> None:
    """Each split keeps a row, and every user of a given split has a training row (a computed
    split gives each user one): the errors say why not."""
    after = f" kept by --threshold {rule_text(cols.thresholds)}" if cols.thresholds else ""
    for s in (TRAIN, VALID, TEST):
        if (codes == s).any():
            continue
        name = SPLIT_NAMES[s]
        if split.rule == "files":
            source = readers[s].source
            why = ("the file has no data rows" if read.rows[s] == 0 else
                   f"--threshold {rule_text(cols.thresholds)} keeps none of its {read.rows[s]:,} rows" if read.kept[s] == 0
                   else "each of its rows repeats a (user, item) pair of an earlier split")
            raise DataError(source, f"the {name} split would be empty: {why}")
        if split.rule == "column":
            value = f"{cols.split} {split.values[s]}"
            why = (f"no row has {value}" if read.split_rows[s] == 0 else
                   f"--threshold {rule_text(cols.thresholds)} keeps none of its rows with {value}"
                   if read.split_kept[s] == 0 else f"each row with {value} repeats a (user, item) pair of an earlier split")
            raise DataError(readers[0].source, f"the {name} split would be empty: {why}")
        if split.rule in ("random", "temporal"):
            rule = "per-user 8:1:1" if split.rule == "random" else "per-user leave-last-out"
            raise DataError(readers[0].source, f"no user has 3 or more interactions{after}, so the {rule} split leaves "
                            f"the valid and test splits empty{split.hint}")
        raise DataError(readers[0].source, f"the {name} split would be empty ({SPLIT_SOURCES[split.rule]}): too few "
                        f"distinct times{after}{split.hint}")
    if split.rule not in ("column", "files"):
        return
    has_train = np.zeros(len(user_tokens), bool)
    has_train[user[codes == TRAIN]] = True
    present = np.zeros(len(user_tokens), bool)
    present[user] = True
    if (present & ~has_train).any():  # per user; the rows are searched only to name one
        j = first_true(~has_train[user])
        reader, row = _locate(readers, read.rows, int(rows[j]))
        train_rows = f"row in {Path(readers[0].source).name}" if split.rule == "files" else \
            f"row with {cols.split} {split.values[TRAIN]}"
        raise DataError(reader.where(row), f"user {show(reader.cell(cols.user, row))} has no training interaction "
                        f"(no {train_rows}); every user needs one: drop the user or add a training row", column=cols.user)
