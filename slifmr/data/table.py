"""Import your own data from Parquet or CSV tables (`slifmr data import table`).

    interactions   one row per (user, item) event: id columns of any type, an optional
                   timestamp, rating/label columns (`thresholds`) and split column
    items          item metadata keyed by the item id; `text_columns` become a text modality
    features       per modality, an (item id, vector) table (a list column, a text column of
                   numbers, or one column per dimension: `vector_columns`) or an .npy matrix
                   whose rows follow the items table's rows
    kg             (head, relation, tail) triples and (item, entity) links, raw ids

Sources are local paths or any URI pyarrow's filesystems open (file://, s3://, gs://, hdfs://).
Every table is read in record batches through pyarrow.dataset; the interactions go through the
import pipeline every importer shares (slifmr/data/pipeline.py: ids, feedback rule, repeated
pairs, split, checks); joins are pyarrow hash lookups (`index_in`), and nothing loops over rows
in Python. The rules where a table is silent:

* Ids are strings or integers; an integer id is its decimal text (7 and "7" are one id). A
  string id has its surrounding whitespace stripped ('u1 ' is 'u1'); an id that is null, empty
  after stripping or holds a control character is an error. Float ids are refused.
* Feedback: the rule every importer shares (slifmr/data/feedback.py): every row is a positive,
  unless `thresholds` ({"rating": 4}) keep only rows with every named column >= its value
  (RecBole's convention); a `label` column with values <= 0 is refused without a label
  threshold, a `rating` column is reported as ignored; the summary says what was dropped.
* Timestamps are numbers (seconds) or Arrow timestamps; text dates are refused, never guessed.
* Repeated (user, item) pairs keep their first row (in the earliest split of a split column).
* Splits (`split`): "column" keeps the table's split column (train/valid/test or 0/1/2);
  "random" is the per-user seeded 8:1:1 split of MMRec and FREEDOM (Zhou et al., 2023);
  "temporal" is per-user leave-last-out: each user's last interaction is test and the one
  before valid (SASRec, Kang and McAuley, ICDM 2018; NCF's leave-one-out, He et al., WWW
  2017); "global-temporal" cuts every interaction at the 80% and 90% time quantiles, so that
  nothing from the future trains the model (Meng et al., "Exploring Data Splitting Strategies
  for the Evaluation of Recommendation Models", RecSys 2020). Valid and test rows of users
  without a training row are dropped there (a ranker cannot score a user it never saw), and
  counted in the summary.
* Feature and metadata rows of items that never occur in the interactions are dropped; items
  with no feature row get a zero row and are marked missing (`Dataset.feature_present`), and
  the modality's item graph leaves them out.

Errors name the source (the file of a folder), the 0-based data row (CSV: also its line), the
column and the raw value, and nothing is written before every check has passed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from slifmr.data.format import Dataset, check_feature_values
from slifmr.data.ids import IdChunk, TokenIds, check_ids, lookup, raw_ids
from slifmr.data.ids import show as _show
from slifmr.data.pipeline import InteractionColumns, Split, emit, read_interactions
from slifmr.errors import DataError, SlifmrError
from slifmr.paths import absolute_path

BATCH_ROWS = 1 << 20
TABLE_SUFFIXES = (".npy", ".parquet", ".pq", ".csv", ".tsv", ".gz")


# ----------------------------------------------------------------------------- sources


@dataclass
class Table:
    """One Parquet or CSV source (a file, or a folder of files read as one table), read in
    record batches of the named columns. A folder's files are named in errors by their own
    path and row: `where` maps a row of the whole table to the file that holds it."""

    source: str
    dataset: pads.Dataset
    is_csv: bool
    is_folder: bool = False
    root: str = ""
    # each file's column names, where the folder's files differ (their union is the schema)
    file_columns: dict[str, list[str]] = field(default_factory=dict)
    # the first table row of each file read so far, and its path, in read order
    file_starts: list[int] = field(default_factory=list)
    file_paths: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return self.dataset.schema.names

    def require(self, *columns: str, named_by: str = "") -> None:
        """DataError unless every file has every column (`named_by`: which option asked for it)."""
        for col in columns:
            if col not in self.columns:
                raise DataError(self.source, f"column{named_by} is missing (found: {', '.join(self.columns)})", column=col)
            lacking = [path for path, names in self.file_columns.items() if col not in names]
            if lacking:
                raise DataError(self.file_name(lacking[0]), f"column{named_by} is missing (found: "
                                f"{', '.join(self.file_columns[lacking[0]])}), although other files of "
                                f"{self.source} have it", column=col)

    def batches(self, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(offset of the batch's first row, batch), in file order."""
        self.require(*columns)
        offset = 0
        self.file_starts, self.file_paths = [], []
        try:
            # ordered (Arrow's ScanBatches: "the batches will arrive in order") while threads decode
            # ahead; two batches of read-ahead bound the memory that costs
            scanner = self.dataset.scanner(columns=list(columns), batch_size=BATCH_ROWS, use_threads=True,
                                           batch_readahead=2, fragment_readahead=1)
            for tagged in scanner.scan_batches():
                if not self.file_paths or self.file_paths[-1] != tagged.fragment.path:
                    self.file_starts.append(offset)
                    self.file_paths.append(tagged.fragment.path)
                yield offset, tagged.record_batch
                offset += tagged.record_batch.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            first = (str(e).splitlines() or ["unreadable"])[0]
            name = self.file_name(self.file_paths[-1]) if self.file_paths else self.source
            raise DataError(name, f"cannot be read after row {offset - (self.file_starts or [0])[-1]} "
                                  f"({first[:200]})") from None

    def file_name(self, path: str) -> str:
        """A file of a folder as the user named it: the folder as given, then the file's path in it."""
        return f"{self.source.rstrip('/')}/{Path(path).relative_to(self.root).as_posix()}" if self.is_folder else self.source

    def where(self, row: int) -> str:
        """The file and its own row of the table's row `row`, for an error (0-based; CSV rows also
        give their line, header = line 1)."""
        name = self.source
        if self.is_folder and self.file_starts:
            i = bisect.bisect_right(self.file_starts, row) - 1
            name, row = self.file_name(self.file_paths[i]), row - self.file_starts[i]
        return f"{name}, row {row}" + (f" (line {row + 2})" if self.is_csv else "")

    def row_named(self, row: int) -> tuple[str, str]:
        return self.where(row), "this row"

    def cell(self, column: str, row: int) -> object:
        return self.dataset.take([row], columns=[column]).column(0)[0].as_py()

    def numbers(self, arr: pa.Array, offset: int, column: str, hint: str = "") -> np.ndarray:
        return numbers(self, arr, offset, column, hint)

    def feedback_columns(self) -> list[str]:
        """The columns the feedback rule may read: in every file of the table, and a `label` only
        when it holds numbers (a text label is no explicit feedback value: it is left alone)."""
        everywhere = [c for c in self.columns if all(c in names for names in self.file_columns.values())]
        label = self.dataset.schema.field("label").type if "label" in everywhere else None
        if label is not None and not (_is_number(label) or pa.types.is_boolean(label)):
            everywhere.remove("label")
        return everywhere


def _unified(dataset: pads.Dataset, fmt: pads.FileFormat, fs: pafs.FileSystem, source: str,
             table: Table) -> pads.Dataset:
    """A folder's files read with the union of their columns (a column added in later files is
    found whichever file sorts first); types that cannot be unified are named with both files."""
    schemas = [(path, fmt.inspect(path, filesystem=fs)) for path in dataset.files]
    if len({tuple(s.names) for _, s in schemas}) > 1:
        table.file_columns = {path: s.names for path, s in schemas}
    try:
        schema = pa.unify_schemas([s for _, s in schemas], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        seen: dict[str, tuple[str, pa.DataType]] = {}
        for path, s in schemas:
            for f in s:
                first = seen.setdefault(f.name, (path, f.type))
                if first[1] != f.type:
                    raise DataError(source, f"the files' column types differ: {first[1]} in {table.file_name(first[0])}, "
                                    f"{f.type} in {table.file_name(path)}", column=f.name) from None
        raise
    return pads.dataset(dataset.files, schema=schema, format=fmt, filesystem=fs)


def _folder_suffix(fs: pafs.FileSystem, path: str, source: str) -> str:
    """The one kind of file a folder holds ('.csv', '.tsv', with '.gz'; else Parquet, Spark's
    suffix-less parts included), skipping the names Arrow's dataset discovery skips ('.', '_')."""
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
             if f.type == pafs.FileType.File and not Path(f.path).name.startswith((".", "_"))]
    kinds = {next((k for k in (".csv", ".tsv", ".csv.gz", ".tsv.gz") if f.lower().endswith(k)), ".parquet") for f in files}
    if len(kinds) > 1:
        raise DataError(source, f"holds files of different kinds ({', '.join(sorted(kinds))}): a folder is one "
                                "table, all Parquet or all CSV")
    return kinds.pop() if kinds else ".parquet"


def open_table(source: str | Path, string_columns: Sequence[str] = ()) -> Table:
    """A Parquet (.parquet, .pq or a folder of them) or CSV (.csv, .tsv, optionally .gz) source;
    a path or a URI of any pyarrow filesystem. `string_columns` (id columns) are read from CSV
    as text (so an id '007' stays '007'); Parquet keeps its types (a plain string column is read
    plain: the reader's dictionary encoding would hash every row, then `TokenIds` again). A
    folder's files are read in path order with the union of their columns."""
    source = str(source)
    try:
        if "://" in source:
            fs, path = pafs.FileSystem.from_uri(source)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(source).absolute())
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(source, f"cannot be opened ({str(e).splitlines()[0][:200]})") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(source, "file is missing")
    is_folder = info.type == pafs.FileType.Directory
    name = (_folder_suffix(fs, path, source) if is_folder else path.lower()).removesuffix(".gz")
    is_csv = name.endswith((".csv", ".tsv"))
    if is_csv:
        fmt = pads.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ","),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in string_columns}),
        )
    elif name.endswith((".parquet", ".pq")) or is_folder:
        fmt = pads.ParquetFileFormat()
    else:
        raise DataError(source, "is neither Parquet (.parquet, .pq) nor CSV (.csv, .tsv, optionally .gz)")
    try:
        table = Table(source, pads.dataset(path, format=fmt, filesystem=fs), is_csv, is_folder, path)
        if is_folder and len(table.dataset.files) > 1:
            table.dataset = _unified(table.dataset, fmt, fs, source, table)
        return table
    except (pa.ArrowException, OSError) as e:
        raise DataError(source, f"not a readable {'CSV' if is_csv else 'Parquet'} table "
                                f"({str(e).splitlines()[0][:200]})") from None


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def id_tokens(table: Table, arr: pa.Array, offset: int, column: str) -> pa.DictionaryArray:
    """`raw_ids` with its dictionary cleaned (`check_ids`): for looking a batch's ids up."""
    ids = raw_ids(table, arr, offset, column)
    if not pa.types.is_dictionary(ids.type):
        ids = pc.dictionary_encode(ids)
    codes = np.asarray(ids.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    text, bad = check_ids(ids.dictionary, [(IdChunk(table, offset, column, offset), codes)])
    if bad is not None:
        raise bad[1]
    return pa.DictionaryArray.from_arrays(ids.indices, text)


def token_array(ids: pa.DictionaryArray) -> pa.Array:
    """The id of every row as plain strings (for hash lookups against another table's ids)."""
    return ids.dictionary.take(ids.indices)


def numbers(table: Table, arr: pa.Array, offset: int, column: str, hint: str = "") -> np.ndarray:
    """A numeric column as finite float64 (Arrow timestamps as seconds)."""
    if pa.types.is_timestamp(arr.type):
        arr = pc.divide(pc.cast(pc.cast(arr, pa.timestamp("us")), pa.int64()).cast(pa.float64()), 1e6)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type)):
        raw = arr[0].as_py() if len(arr) else None
        raise DataError(table.where(offset), f"{_show(raw)} is not a number (the column holds {arr.type})"
                        + (f"; {hint}" if hint else ""), column=column)
    x = np.asarray(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        i = _first(bad)
        raw = arr[i].as_py()
        raise DataError(table.where(offset + i), "missing number" if raw is None else f"{_show(raw)} is not a finite number",
                        column=column)
    return x


# ----------------------------------------------------------------------------- items and features


def read_items(table: Table, key: str, items: pa.Array) -> tuple[pa.Table, np.ndarray, int]:
    """The metadata rows of known items: (table with an `item` column first, sorted by item;
    the item of each source row (-1 unknown); rows dropped as unknown)."""
    table.require(key)
    parts, codes = [], []
    keyed = np.zeros(len(items), bool)
    for offset, batch in table.batches(table.columns):
        code = lookup(items, token_array(id_tokens(table, batch.column(key), offset, key)))
        _refuse_repeats(table, code, keyed, offset, key, items)
        codes.append(code)
        known = code >= 0
        rb = pa.Table.from_batches([batch]).filter(pa.array(known)).drop_columns([key])
        if "item" in rb.column_names:  # the contiguous id takes the name 'item'
            rb = rb.rename_columns([c if c != "item" else "item_" for c in rb.column_names])
        parts.append(rb.add_column(0, "item", pa.array(code[known])))
    code = np.concatenate(codes)
    meta = pa.concat_tables(parts).sort_by("item")
    return meta, code, int((code < 0).sum())


def _refuse_repeats(table: Table, code: np.ndarray, keyed: np.ndarray, offset: int, key: str, items: pa.Array) -> None:
    """An item keyed twice (in this batch or an earlier one) is an error naming its second row.
    code: (rows,) the batch's items (-1 unknown); keyed: (items,) bool, the items of earlier
    batches, updated in place (one pass per batch, however many batches came before)."""
    rows = np.flatnonzero(code >= 0)
    known = code[rows]
    repeat = keyed[known]
    _, first = np.unique(known, return_index=True)
    within = np.ones(known.size, bool)
    within[first] = False
    repeat |= within
    if repeat.any():
        i = _first(repeat)
        raise DataError(table.where(offset + int(rows[i])), f"item {_show(items[int(known[i])].as_py())} has a second row",
                        column=key)
    keyed[known] = True


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A metadata column as text: lists (genres) joined by ', ', anything else cast."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return pc.binary_join(pc.cast(col, pa.list_(pa.string())), ", ")
    return pc.cast(col, pa.string())


def text_sentences(meta: pa.Table, columns: Sequence[str], num_items: int, source: str) -> tuple[list[str], np.ndarray]:
    """One sentence per item, 'value. value' over `columns` (nulls skipped), and which items
    have any text."""
    for col in columns:
        if col not in meta.column_names:
            raise DataError(source, f"column named by --text-cols is missing (found: {', '.join(meta.column_names[1:])})",
                            column=col)
    parts = [pc.fill_null(pc.utf8_trim_whitespace(_as_text(meta.column(c))), "") for c in columns]
    joined = pc.binary_join_element_wise(*parts, ". ") if len(parts) > 1 else parts[0]
    joined = pc.utf8_trim(joined, ". ")
    sentences = [""] * num_items
    item = meta.column("item").to_numpy()
    for i, s in zip(item.tolist(), joined.to_pylist()):  # one per item: the text model's input list
        sentences[i] = s
    present = np.array([bool(s) for s in sentences])
    return sentences, present


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def vector_columns(table: Table, key: str, column: str | None) -> list[str]:
    """The column(s) holding a feature table's vectors, in one of three layouts:

    * a list column of numbers (Parquet);
    * a text column of numbers separated by spaces or commas, optionally in brackets
      ('0.1 0.2 0.3', RecBole's float_seq; '[0.1, 0.2, 0.3]', a list written by pandas), the
      way CSV holds a vector in one cell;
    * one numeric column per dimension (a wide CSV): every column besides the item id.

    `column` names the list or text column; without it the table's only list or text column
    besides `key` is taken, else all its other columns when every one is numeric. Raises
    DataError naming what was found."""
    table.require(key)
    fields = {f.name: f.type for f in table.dataset.schema if f.name != key}
    if column is not None:
        table.require(column)
        if not (_is_list(fields[column]) or _is_text(fields[column])):
            raise DataError(table.source, f"the vector column holds {fields[column]}: give a list column, a text column "
                            "of numbers ('0.1 0.2' or '[0.1, 0.2]'), or one numeric column per dimension "
                            "without naming a column", column=column)
        return [column]
    vectors = [name for name, t in fields.items() if _is_list(t) or _is_text(t)]
    if len(vectors) == 1:
        return vectors
    if not vectors and fields and all(_is_number(t) for t in fields.values()):
        return list(fields)
    found = ", ".join(f"{name} ({t})" for name, t in fields.items()) or "nothing"
    raise DataError(table.source, f"needs one vector column besides the item id '{key}': a list column, a text column "
                    f"of numbers ('0.1 0.2' or '[0.1, 0.2]'), or one numeric column per dimension; found {found}"
                    + ("; name the vector column as NAME=PATH:COLUMN" if len(vectors) > 1 else ""))


def _parsed_vectors(table: Table, text: pa.Array, offset: int, column: str) -> pa.Array:
    """A text column of vectors ('0.1 0.2', '[0.1, 0.2]') as a list<float32> column."""
    parts = pc.split_pattern_regex(pc.utf8_trim(text, "[] \t"), r"[\s,]+")
    try:
        return pc.cast(parts, pa.list_(pa.float32()))
    except pa.ArrowInvalid:  # the first cell that is not numbers, named (only on the error path)
        for i, cell in enumerate(parts.to_pylist()):
            try:
                [float(x) for x in cell or []]
            except ValueError:
                raise DataError(table.where(offset + i), f"{_show(text[i].as_py())} is not a vector of numbers "
                                "(numbers separated by spaces or commas, optionally in brackets)", column=column) from None
        raise


def _vector_rows(table: Table, batch: pa.RecordBatch, columns: list[str], offset: int, d: int | None) -> np.ndarray:
    """A batch's vectors (B, d) float32 from `vector_columns`' layout; `d`: the length every
    earlier batch had (None for the first). Raises DataError at the first bad row."""
    if len(columns) > 1 or _is_number(batch.column(columns[0]).type):  # one column per dimension
        for col in columns:
            arr = batch.column(col)
            if not _is_number(arr.type):
                raise DataError(table.source, f"holds {arr.type}, not numbers (one column per dimension)", column=col)
            if arr.null_count:
                i = _first(np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool))
                raise DataError(table.where(offset + i), "missing number", column=col)
        return np.column_stack([np.asarray(batch.column(c).to_numpy(zero_copy_only=False), np.float32)
                                for c in columns]).reshape(batch.num_rows, len(columns))
    column = columns[0]
    vec = batch.column(column)
    if vec.null_count:
        i = _first(np.asarray(vec.is_null().to_numpy(zero_copy_only=False), dtype=bool))
        raise DataError(table.where(offset + i), "missing vector", column=column)
    if _is_text(vec.type):
        vec = _parsed_vectors(table, vec, offset, column)
    lengths = np.asarray(pc.list_value_length(vec).to_numpy(zero_copy_only=False))
    d = int(lengths[0]) if d is None and len(lengths) else d or 0
    if (lengths != d).any() or d == 0:
        i = _first(lengths != d) if (lengths != d).any() else 0
        raise DataError(table.where(offset + i), f"vector of length {int(lengths[i])}, expected {d} (every vector "
                        "has the same positive length)", column=column)
    try:
        flat = np.asarray(pc.cast(pc.list_flatten(vec), pa.float32()).to_numpy(zero_copy_only=False), np.float32)
    except pa.ArrowException:
        raise DataError(table.source, f"the vectors hold {vec.type.value_type}, not numbers", column=column) from None
    return flat.reshape(-1, d)


def features_from_table(table: Table, key: str, items: pa.Array, column: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(N, d) float32 from an (item id, vector) table in any of `vector_columns`' layouts, zero
    rows where an item has none; which rows are present; rows dropped as unknown items."""
    columns = vector_columns(table, key, column)
    n = len(items)
    out: np.ndarray | None = None
    present = np.zeros(n, bool)
    dropped = 0
    keyed = np.zeros(n, bool)
    for offset, batch in table.batches([key, *columns]):
        if batch.num_rows == 0:  # an empty file of a folder
            continue
        code = lookup(items, token_array(id_tokens(table, batch.column(key), offset, key)))
        _refuse_repeats(table, code, keyed, offset, key, items)
        rows = _vector_rows(table, batch, columns, offset, None if out is None else out.shape[1])
        bad = ~np.isfinite(rows).all(1)
        if bad.any():
            i = _first(bad)
            c = _first(~np.isfinite(rows[i]))
            name = columns[c] if len(columns) > 1 else columns[0]
            raise DataError(table.where(offset + i), f"vector entry {c} is {rows[i, c]} (NaN or inf)", column=name)
        if out is None:
            out = np.zeros((n, rows.shape[1]), np.float32)
        known = code >= 0
        out[code[known]] = rows[known]
        present[code[known]] = True
        dropped += int((~known).sum())
    if out is None:
        raise DataError(table.source, "no rows")
    check_feature_values(out, table.source)
    return out, present, dropped


def features_from_npy(path: str, order: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) float32 from an .npy matrix whose row r is the item order[r] (the items table's
    row order; -1: an item not in the interactions, skipped); which rows are present."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(path, f"not a readable .npy array ({e})") from None
    if x.ndim != 2 or x.shape[0] != order.size:
        raise DataError(path, f"has shape {tuple(x.shape)}, expected ({order.size}, d): one row per row of the items "
                        "table, in its order")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(path, f"dtype {x.dtype} is not numeric")
    check_feature_values(x, path)
    out = np.zeros((num_items, x.shape[1]), np.float32)
    present = np.zeros(num_items, bool)
    known = order >= 0
    out[order[known]] = x[known]
    present[order[known]] = True
    return out, present


# ----------------------------------------------------------------------------- knowledge graph


def read_kg(triples: Table, links: Table, items: pa.Array, head: str = "head", relation: str = "relation",
            tail: str = "tail", link_item: str = "item", link_entity: str = "entity"
            ) -> tuple[np.ndarray, np.ndarray, int, list[str], pa.Array, dict[str, int]]:
    """(kg (T, 3), item_entity (L, 2), entities, relation names, entity tokens, counts) from raw
    triples and item -> entity links; links of items outside the interactions are dropped."""
    entities, relations = TokenIds(), TokenIds()
    link_items: list[np.ndarray] = []
    for offset, batch in links.batches([link_item, link_entity]):
        link_items.append(lookup(items, token_array(id_tokens(links, batch.column(link_item), offset, link_item))))
        entities.add(links, batch.column(link_entity), offset, link_entity)
    n_link_chunks = len(entities.lengths)
    for offset, batch in triples.batches([head, relation, tail]):  # per batch: a head chunk, then a tail chunk
        entities.add(triples, batch.column(head), offset, head)
        entities.add(triples, batch.column(tail), offset, tail)
        relations.add(triples, batch.column(relation), offset, relation)
    entity_tokens, entity_codes = entities.finish()
    ent = entities.split(entity_codes)
    relation_tokens, rel = relations.finish()
    if not rel.size:
        raise DataError(triples.source, "no triples")
    heads, tails = ent[n_link_chunks::2], ent[n_link_chunks + 1 :: 2]
    kg = np.stack([np.concatenate(heads), rel, np.concatenate(tails)], 1)
    item = np.concatenate(link_items) if link_items else np.zeros(0, np.int64)
    linked = np.concatenate(ent[:n_link_chunks]) if n_link_chunks else np.zeros(0, np.int64)
    known = item >= 0
    pairs = np.stack([item[known], linked[known]], 1)
    if pairs.size:
        uniq, first = np.unique(pairs[:, 0], return_index=True)
        if uniq.size < pairs.shape[0]:
            seen = np.zeros(pairs.shape[0], bool)
            seen[first] = True
            dup = _first(~seen)
            row = int(np.flatnonzero(known)[dup])
            raise DataError(links.where(row), f"item {_show(items[int(pairs[dup, 0])].as_py())} is linked to a second "
                            "entity", column=link_item)
    counts = {"links_dropped": int((~known).sum())}
    return kg, pairs.astype(np.int64), len(entity_tokens), relation_tokens.to_pylist(), entity_tokens, counts


# ----------------------------------------------------------------------------- the import


@dataclass
class FeatureSource:
    """One modality: `name`, from `path` (Parquet / CSV keyed by item id, or .npy in the items
    table's row order), its vector `column` (default: the one list column)."""

    name: str
    path: str
    column: str | None = None

    @staticmethod
    def parse(spec: str) -> FeatureSource:
        """'NAME=PATH' or 'NAME=PATH:COLUMN' (a URI's own ':' is kept)."""
        name, sep, rest = spec.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise SlifmrError(f"--features {spec!r}: expected NAME=PATH or NAME=PATH:COLUMN (e.g. image=image_emb.parquet)")
        rest = rest.strip()
        head, colon, tail = rest.rpartition(":")
        if colon and head and "/" not in tail and not rest.lower().endswith(TABLE_SUFFIXES):
            return FeatureSource(name.strip(), head, tail)
        return FeatureSource(name.strip(), rest)


def attach_features(ds: Dataset, name: str, x: np.ndarray, present: np.ndarray, source: str) -> None:
    """Add modality `name` (N, d) with its present-row mask to `ds` (refusing a name in use)."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise SlifmrError(f"modality name {name!r}: use letters, digits, '-' and '_'")
    if name in ds.features:
        raise SlifmrError(f"the dataset already has a modality named {name!r}")
    if present.sum() < 2:
        raise DataError(source, f"{int(present.sum())} row(s) match an item of the dataset, a modality needs 2 "
                        "(are the ids the same as the interactions'?)")
    ds.features[name] = x
    ds.feature_present[name] = present
    ds.provenance.setdefault("features", {})[name] = {"source": source, "coverage": float(present.mean())}


def import_table(interactions: str, *, columns: InteractionColumns | None = None, split: str = "random",
                 split_seed: int = 2026, items: str | None = None, item_key: str | None = None,
                 text_columns: Sequence[str] = (), features: Sequence[FeatureSource] = (),
                 kg: str | None = None, kg_links: str | None = None, name: str | None = None,
                 cache_dir: Path | None = None) -> Dataset:
    """A `Dataset` (not yet written) from tables; see the module docstring for the rules.

    Raises DataError (file, row, column, raw value) on bad input, SlifmrError on bad options."""
    cols = columns or InteractionColumns()
    if (kg is None) != (kg_links is None):
        raise SlifmrError("a KG needs both --kg (head, relation, tail triples) and --kg-links (item, entity links)")
    if text_columns and items is None:
        raise SlifmrError("--text-cols needs --items (the item metadata table holding those columns)")
    if item_key is not None and items is None and not features and kg_links is None:
        raise SlifmrError("--item-key names the item id column of --items, --features and --kg-links tables: "
                          "give one of them, or drop --item-key")
    if cache_dir is not None and not text_columns:
        raise SlifmrError("--cache-dir holds text embeddings: it applies with --text-cols only")
    table = open_table(interactions, [cols.user, cols.item] + ([cols.split] if cols.split else []))
    inter = read_interactions([table], cols, Split(split, split_seed, hint=" (give more interactions, or a split "
                                                   "column: --split column --split-col COLUMN)"))
    n = len(inter.items)
    ds = inter.to_dataset(name or Path(interactions.rstrip("/")).stem, {"importer": "table", "source": absolute_path(interactions)},
                          split_seed=split_seed if split == "random" else None)
    key = item_key or cols.item
    order = None
    if items is not None:
        meta_table = open_table(items, [key])
        meta, order, unknown = read_items(meta_table, key, inter.items)
        ds.items = meta
        ds.provenance["import"]["item_rows_dropped"] = unknown
        add_text_modality(ds, text_columns, cache_dir, meta_table.source)
    for f in features:
        if f.path.lower().endswith(".npy"):
            if order is None:
                raise SlifmrError(f"--features {f.name}={f.path}: an .npy matrix's rows follow the items table; pass --items")
            x, present = features_from_npy(f.path, order, n)
        else:
            ft = open_table(f.path, [key])
            x, present, _ = features_from_table(ft, key, inter.items, f.column)
        attach_features(ds, f.name, x, present, absolute_path(f.path))
    if kg is not None and kg_links is not None:
        triples = open_table(kg, ["head", "relation", "tail"])
        links = open_table(kg_links, [key, "entity"])
        ds.kg, ds.item_entity, ds.num_entities, ds.relation_names, entity_tokens, counts = read_kg(
            triples, links, inter.items, link_item=key)
        ds.ids["entities"] = entity_tokens
        ds.provenance["import"].update(counts)
    emit(inter.warnings, inter.notes["feedback_log"])  # once every check has passed
    return ds


def add_text_modality(ds: Dataset, columns: Sequence[str], cache_dir: Path | str | None, source: str) -> None:
    """Embed `columns` of the item metadata (ds.items) with all-MiniLM-L6-v2 into modality
    'text' (N, 384), batched and cached by content; items without text get a zero row, marked
    missing. Without the model installed: a warning, and no text modality."""
    if not columns:
        return
    if ds.items is None:
        raise SlifmrError(f"--text-cols {','.join(columns)}: the dataset has no item metadata to embed")
    from slifmr.data.ml100k import cache_root
    from slifmr.data.text import MODEL_NAME, embed_sentences

    sentences, present = text_sentences(ds.items, columns, ds.num_items, source)
    vectors = embed_sentences(sentences, cache_root(cache_dir) / "embeddings")
    if vectors is None:
        return
    vectors[~present] = 0.0
    attach_features(ds, "text", vectors, present, f"{MODEL_NAME} over {' + '.join(columns)}")


def add_features(path: str | Path, name: str, source: FeatureSource | str, key: str = "item_id") -> Dataset:
    """Read the dataset folder `path`, attach modality `name` from a keyed table (raw item ids as
    in the dataset's ids/items.parquet) and return it, to be written back atomically."""
    from slifmr.data.format import read_dataset

    ds = read_dataset(path)
    src = source if isinstance(source, FeatureSource) else FeatureSource(name, str(source))
    if "items" not in ds.ids:
        raise DataError(str(path), "has no raw item ids (ids/items.parquet) to match the feature table's ids against")
    if src.path.lower().endswith(".npy"):
        raise SlifmrError("add-features takes a table keyed by item id (Parquet or CSV); an .npy matrix has no ids")
    tokens = pa.array(np.asarray(ds.ids["items"]).astype(str))
    table = open_table(src.path, [key])
    x, present, _ = features_from_table(table, key, tokens, src.column)
    attach_features(ds, name, x, present, absolute_path(src.path))
    ds.digest = None  # a new modality: a new fingerprint
    return ds
