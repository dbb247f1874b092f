"""Importer for RecBole atomic files (.inter/.item/.user/.kg/.link, and pre-split
<name>.train.inter/.valid.inter/.test.inter as RecBole's benchmark_filename reads them).

Atomic files are tab-separated with a header of `name:type` cells; types are token,
token_seq (space-separated), float and float_seq. Ids are remapped to contiguous int64, in
the order they first appear. The rules this importer applies where the format is silent:

* Text is UTF-8, with or without a byte-order mark (the header is decoded as utf-8-sig). A
  file that is not UTF-8 is refused, naming its line, column and the offending bytes. Lines
  end in \\n, \\r\\n or \\r; blank lines are skipped (as RecBole's pandas reader does) and still
  counted in line numbers. Surrounding whitespace of a header cell is ignored; a column
  named twice is an error.
* Ids (user_id, item_id, head_id, relation_id, tail_id, entity_id) are tokens whose
  surrounding whitespace is stripped: 'u1 ' and 'u1' are one user. An id that is empty after
  stripping, or holds a control character, is an error.
* Numbers (timestamp, label, a --threshold column, float fields of .item) are decimal
  numbers ('3', '-2.5', '1e9'); surrounding whitespace is ignored. Timestamps are numeric
  seconds (Unix time): text dates ('Mar 1 2018') and ISO dates ('2018-03-01') are refused,
  never guessed, and so are NaN and inf. An empty float cell of .item metadata is null.
* The interactions go through the import pipeline every importer shares
  (slifmr/data/pipeline.py): implicit feedback with `thresholds={"rating": 4}` (RecBole's
  convention), a `label` holding values <= 0 refused without one, a `rating` reported as
  ignored; repeated (user, item) pairs dropped with a warning, keeping the first (for a
  pre-split set, in the earliest split; RecBole keeps repeated ratings as separate rows, an
  implicit-feedback ranker needs each pair once). A pre-split set keeps its split exactly:
  each split file must keep a row, and every user needs a training row. Without a pre-split,
  the per-user 8:1:1 split must leave a row in valid and test (some user needs 3
  interactions).
* The catalogue is the items the kept interactions name, as in every importer: rows of .item
  and .link for other items are dropped and counted (provenance["import"]). RecBole itself
  would also number .item's other items; they could never be a positive in any split.
* Fields of .item: float_seq fields become modalities (one row per item, space-separated
  numbers of one length; an empty cell or an item without a row is a zero row marked missing);
  the other fields are item metadata (items.parquet), which `--text-cols` can embed.
* Every error names the source file, the 1-based physical line (the header is line 1), the
  column as written in the header and the raw value; warnings are printed only once the
  whole import has passed, so a refused import prints one line.

Everything runs over whole columns (pyarrow.compute, numpy); only the error paths walk a
file line by line to find the line to name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from slifmr.data.format import Dataset
from slifmr.data.ids import (
    TokenIds,
    first_failing,
    first_true,
    lookup,
    refused_because,
    stripped_ids,
)
from slifmr.data.pipeline import SPLIT_NAMES, InteractionColumns, Split, emit, read_interactions
from slifmr.errors import DataError, SlifmrError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
USER, ITEM, TIME = "user_id", "item_id", "timestamp"
HEAD, RELATION, TAIL, ENTITY = "head_id", "relation_id", "tail_id", "entity_id"
_NEWLINE = re.compile(rb"\r\n|\r|\n")


# ----------------------------------------------------------------------------- text files


def _mask(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=bool)


def _read_header(path: Path) -> tuple[bytes, int]:
    """The first line's bytes (without its line end) and the offset where the data starts."""
    buf = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 16)
            buf += block
            m = _NEWLINE.search(buf)
            if m and (m.group() != b"\r" or m.end() < len(buf) or not block):
                return buf[: m.start()], m.end()
            if not block:
                return buf, len(buf)


def _show(raw: bytes | str, limit: int = 40) -> str:
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


class TextFile:
    """One tab-separated text file, read as string columns, that names its lines in errors: a
    `Reader` of the import pipeline (slifmr/data/pipeline.py)."""

    def __init__(self, path: Path, table: pa.Table, types: dict[str, str]):
        self.path, self.table, self.types = path, table, types
        self.source = str(path)

    @property
    def columns(self) -> list[str]:
        return list(self.types)

    def has(self, col: str) -> bool:
        return col in self.types

    def require(self, *columns: str, named_by: str = "") -> None:
        for col in columns:
            if col not in self.types:
                raise self.error(f"column{named_by} is missing from the header (found: {', '.join(self.types)})",
                                 column=col, line=1)

    def batches(self, columns: Sequence[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
        self.require(*columns)
        offset = 0
        for batch in self.table.select(list(columns)).to_batches():
            yield offset, batch
            offset += batch.num_rows

    def line(self, row: int) -> int | None:
        """The 1-based physical line of data row `row` (error path: reads the file again)."""
        n = -1
        for no, text in enumerate(_NEWLINE.split(self.path.read_bytes())[1:], start=2):
            if text:  # pyarrow skips blank lines
                n += 1
                if n == row:
                    return no
        return None

    def where(self, row: int) -> str:
        line = self.line(row)
        return f"{self.path}, line {line}" if line is not None else str(self.path)

    def row_named(self, row: int) -> tuple[str, str]:
        return str(self.path), f"line {self.line(row)}"

    def error(self, message: str, row: int | None = None, column: str | None = None,
              line: int | None = None) -> DataError:
        if row is not None:
            line = self.line(row)
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        return DataError(where, message, column=column)

    def cell(self, col: str, row: int) -> str:
        return self.table.column(col)[row].as_py()

    def ids(self, col: str) -> pa.ChunkedArray:
        """An id column, surrounding whitespace stripped; empty ids and control characters refused."""
        vals, bad = stripped_ids(self.table.column(col))
        if pc.any(bad).as_py():
            i = first_true(_mask(bad))
            raise self.error(refused_because(self.cell(col, i)), row=i, column=col)
        return vals

    def feedback_columns(self) -> list[str]:
        return list(self.types)

    def numbers(self, arr: pa.Array | pa.ChunkedArray, offset: int, column: str, hint: str = "",
                nullable: bool = False) -> np.ndarray | pa.ChunkedArray:
        """Rows `offset`.. of a text column as float64: finite values (numpy), or with empty cells
        as nulls (`nullable`: a pyarrow array, NaN allowed)."""
        vals = pc.utf8_trim_whitespace(arr)
        if nullable:
            vals = pc.if_else(pc.equal(pc.utf8_length(vals), 0), pa.scalar(None, pa.string()), vals)
        try:
            out = pc.cast(vals, pa.float64())
        except pa.ArrowException:
            i = first_failing(vals, lambda a: pc.cast(a, pa.float64()))
            raw = arr[i].as_py()
            msg = "empty cell, a number is required" if not raw.strip() else f"{_show(raw)} is not a number"
            raise self.error(msg + (f" ({hint})" if hint else ""), row=offset + i, column=column) from None
        if nullable:
            return out
        x = np.asarray(out.to_numpy(), dtype=np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            i = first_true(bad)
            raise self.error(f"{_show(arr[i].as_py())} is not a finite number" + (f" ({hint})" if hint else ""),
                             row=offset + i, column=column)
        return x


def _not_utf8(path: Path, no: int, line: bytes, e: UnicodeDecodeError, names: Sequence[str] = ()) -> DataError:
    k = line[: e.start].count(b"\t")
    cells = line.split(b"\t")
    cell = cells[k] if k < len(cells) else line
    column = names[k] if no > 1 and k < len(names) else None
    return DataError(f"{path}, line {no}", f"not UTF-8 (bytes {_show(cell)}); save the file as UTF-8", column=column)


def _diagnose(path: Path, names: Sequence[str], cause: Exception) -> DataError:
    """Why pyarrow could not read the data rows (error path: walks the lines)."""
    for no, text in enumerate(_NEWLINE.split(path.read_bytes()), start=1):
        if no == 1 or not text:
            continue
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:
            return _not_utf8(path, no, text, e, names)
        n = text.count(b"\t") + 1
        if n != len(names):
            return DataError(f"{path}, line {no}",
                             f"has {n} tab-separated cells, the header has {len(names)} ({_show(text)})")
    first = (str(cause).splitlines() or ["unreadable"])[0]
    return DataError(str(path), f"malformed ({_show(first, 200)})")


def read_text(path: Path, parse_header: Callable[[list[str], Path], dict[str, str]],
              required: tuple[str, ...] = ()) -> TextFile:
    """Read a tab-separated file with a header line as string columns.

    `parse_header(cells, path)` turns the stripped header cells into {column: type}."""
    if not path.exists():
        raise DataError(str(path), "file is missing")
    if not path.is_file():
        raise DataError(str(path), "is not a file")
    try:
        head, start = _read_header(path)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(str(path), f"cannot be read ({e.strerror or e})") from e
    try:
        header = head.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, 1, head, e) from None
    if not header.strip():
        raise DataError(f"{path}, line 1", "the header line is empty" + (" (the file is empty)" if size == 0 else ""))
    cells = [c.strip() for c in header.split("\t")]
    bad = next((c for c in cells if not c.isprintable()), None)
    if bad is not None:
        raise DataError(f"{path}, line 1", f"header cell {_show(bad)} holds a control or line-separator character")
    types = parse_header(cells, path)
    for col in required:
        if col not in types:
            raise DataError(f"{path}, line 1", f"column is missing from the header (found: {', '.join(types)})", column=col)
    names = list(types)
    empty = pa.table({n: pa.array([], pa.string()) for n in names})
    table = empty
    if start < size:
        try:
            with pa.memory_map(str(path)) as src:
                src.seek(start)
                table = pacsv.read_csv(
                    src,
                    read_options=pacsv.ReadOptions(column_names=names),
                    parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, newlines_in_values=False),
                    convert_options=pacsv.ConvertOptions(
                        column_types={n: pa.string() for n in names}, strings_can_be_null=False
                    ),
                )
        except (pa.ArrowException, OSError) as e:
            err = _diagnose(path, names, e)
            if "malformed" in err.message and not any(_NEWLINE.split(path.read_bytes())[1:]):
                table = empty  # only blank lines after the header
            else:
                raise err from None
    return TextFile(path, table, types)


def _atomic_header(cells: list[str], path: Path) -> dict[str, str]:
    types: dict[str, str] = {}
    for cell in cells:
        name, _, ftype = cell.partition(":")
        name, ftype = name.strip(), ftype.strip()
        if ftype not in FIELD_TYPES or not name:
            raise DataError(f"{path}, line 1", f"header cell {_show(cell)} is not 'name:type' with type in {FIELD_TYPES}")
        if name in types:
            raise DataError(f"{path}, line 1", "column is named twice in the header", column=name)
        types[name] = ftype
    return types


def read_atomic(path: Path, required: tuple[str, ...] = ()) -> TextFile:
    """Read one atomic file as string columns (header `name:type` cells)."""
    return read_text(path, _atomic_header, required)


# ----------------------------------------------------------------------------- ids


# ----------------------------------------------------------------------------- feedback


def parse_thresholds(specs: Sequence[str] | None) -> dict[str, float]:
    """`--threshold COL=VALUE` options -> {column: minimum kept value}."""
    out: dict[str, float] = {}
    for spec in specs or ():
        col, sep, value = spec.partition("=")
        col, value = col.strip(), value.strip()
        if not sep or not col or not value:
            raise SlifmrError(f"--threshold {spec!r}: expected COLUMN=VALUE (e.g. label=1 or rating=4)")
        try:
            v = float(value)
        except ValueError:
            raise SlifmrError(f"--threshold {spec}: {value!r} is not a number") from None
        if not np.isfinite(v):
            raise SlifmrError(f"--threshold {spec}: the value must be a finite number")
        if col in out:
            raise SlifmrError(f"--threshold {col} is given twice")
        out[col] = v
    return out


# ----------------------------------------------------------------------------- import


def _inter_files(root: Path, name: str) -> list[Path]:
    pre = [root / f"{name}.{s}.inter" for s in SPLIT_NAMES]
    if all(p.exists() for p in pre):
        return pre
    single = root / f"{name}.inter"
    if not single.exists() and any(p.exists() for p in pre):
        missing = next(p for p in pre if not p.exists())
        raise DataError(str(missing), "file is missing: a pre-split set needs .train.inter, .valid.inter and .test.inter")
    if not single.exists():
        raise DataError(str(single), f"file is missing (nor are {pre[0].name}/.valid.inter/.test.inter there)")
    return [single]


def dataset_name(root: Path) -> str:
    """The atomic-file prefix in `root` (the folder name when <folder>.inter exists)."""
    if not root.is_dir():
        raise DataError(str(root), "folder does not exist")
    if (root / f"{root.name}.inter").exists() or (root / f"{root.name}.train.inter").exists():
        return root.name
    inters = sorted(p.name for p in root.glob("*.inter"))
    if not inters:
        raise DataError(str(root), "no .inter file in this folder")
    return inters[0].split(".")[0]


def is_presplit(root: str | Path, name: str | None = None) -> bool:
    root = Path(root)
    return len(_inter_files(root, name or dataset_name(root))) == 3


def import_recbole(root: str | Path, name: str | None = None, split_seed: int = 2026,
                   thresholds: dict[str, float] | None = None) -> Dataset:
    """Import a RecBole atomic dataset folder into a `Dataset` (not yet written): its .inter
    file(s) through the import pipeline (slifmr/data/pipeline.py), then .item, .kg and .link.
    Raises DataError naming the file, line, column and raw value of the first bad cell."""
    root = Path(root)
    name = name or dataset_name(root)
    paths = _inter_files(root, name)
    presplit = len(paths) == 3
    files = [read_atomic(p, (USER, ITEM)) for p in paths]
    with_time = all(f.has(TIME) for f in files)
    cols = InteractionColumns(USER, ITEM, TIME if with_time else None, None, dict(thresholds or {}))
    split = Split("files") if presplit else Split("random", split_seed, hint=(
        f" (give more interactions, or a pre-split set {name}.train.inter/.valid.inter/.test.inter)"))
    inter = read_interactions(files, cols, split)
    warnings = list(inter.warnings)
    if not with_time and any(f.has(TIME) for f in files):
        warnings.insert(0, f"{', '.join(p.name for p, f in zip(paths, files) if not f.has(TIME))} has no timestamp "
                        "column: timestamps dropped for every split")
    items = inter.items  # the catalogue's raw ids, by contiguous id
    dropped = {}
    item_table, item_file, listed = None, None, None
    item_path = root / f"{name}.item"
    if item_path.exists():
        item_file = read_atomic(item_path, (ITEM,))
        tok = listed = item_file.ids(ITEM)
        dropped["item_rows_dropped"] = int((lookup(items, tok) < 0).sum())
        if dropped["item_rows_dropped"]:
            warnings.append(f"{item_path}: dropped {dropped['item_rows_dropped']:,} rows of items without a kept "
                            "interaction (the catalogue is the items the interactions name)")
        item_table = _item_metadata(item_file, tok, items)

    kg, links, entities, relations, dropped["links_dropped"] = import_kg(root, name, items, listed)
    features, present = ({}, {}) if item_file is None else float_seq_features(item_file, items)
    emit(warnings, inter.notes["feedback_log"])
    ds = inter.to_dataset(
        name, {"importer": "recbole", "source": str(root.resolve()), "presplit": presplit},
        ids={kind: tokens.to_numpy(zero_copy_only=False).astype(object)
             for kind, tokens in (("users", inter.users), ("items", items), ("entities", entities))},
        features=features, feature_present=present, items=item_table, kg=kg, item_entity=links,
        num_entities=len(entities), relation_names=relations, split_seed=None if presplit else split_seed)
    ds.provenance["import"].update(dropped)
    return ds


def import_kg(root: Path, name: str, items: pa.Array, listed: pa.ChunkedArray | None = None
              ) -> tuple[np.ndarray, np.ndarray, pa.Array, list[str], int]:
    """<name>.kg and <name>.link, if present: (triples (T,3), links (L,2), entity tokens (E,),
    relation names, links dropped). Entities and relations are numbered by the id stage of
    slifmr/data/ids.py (`TokenIds`: heads, then tails, then linked entities, in order of first
    appearance). `items`: the catalogue's raw ids; a link of an item only `listed` (in .item,
    without interactions) is dropped and counted, a link of an item named nowhere is refused (a
    typo, most likely)."""
    entities, relations = TokenIds(), TokenIds()
    kg_file = link_file = None
    kg_path, link_path = root / f"{name}.kg", root / f"{name}.link"
    if kg_path.exists():
        kg_file = read_atomic(kg_path, (HEAD, RELATION, TAIL))
        h, r, t = (kg_file.ids(c).combine_chunks() for c in (HEAD, RELATION, TAIL))
        entities.add(kg_file, h, 0, HEAD)
        entities.add(kg_file, t, 0, TAIL)
        relations.add(kg_file, r, 0, RELATION)
    if link_path.exists():
        link_file = read_atomic(link_path, (ITEM, ENTITY))
        it, ent = link_file.ids(ITEM), link_file.ids(ENTITY).combine_chunks()
        entities.add(link_file, ent, 0, ENTITY)
    entity_tokens, codes = entities.finish()
    relation_tokens, rel = relations.finish()
    kg = np.zeros((0, 3), np.int64)
    links = np.zeros((0, 2), np.int64)
    dropped = 0
    if kg_file is not None:
        heads, tails = np.split(codes[: 2 * rel.size], 2)
        kg = np.stack([heads, rel, tails], axis=1).reshape(-1, 3)
    if link_file is not None:
        f = link_file
        item_ids = lookup(items, it)
        known = item_ids >= 0
        named = known | (np.asarray(pc.is_in(it, value_set=listed).to_numpy(zero_copy_only=False), dtype=bool)
                         if listed is not None else known)
        if not named.all():
            i = first_true(~named)
            raise f.error(f"unknown item {_show(f.cell(ITEM, i))} (not in the interactions or .item)", row=i, column=ITEM)
        dropped = int((~known).sum())
        linked = np.where(known, item_ids, -1 - np.arange(item_ids.size))  # a dropped link repeats nothing
        order = np.argsort(linked, kind="stable")
        again = order[1:][linked[order][1:] == linked[order][:-1]]
        if again.size:
            i = int(again.min())
            first = first_true(linked == linked[i])
            raise f.error(f"item {_show(f.cell(ITEM, i))} is linked a second time (first at line {f.line(first)}): "
                          "one entity per item", row=i, column=ITEM)
        links = np.stack([item_ids, codes[codes.size - item_ids.size :]], axis=1).reshape(-1, 2)[known]
    return kg, links, entity_tokens, relation_tokens.to_pylist(), dropped


def float_seq_features(f: TextFile, items: pa.Array) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every float_seq field of .item as a modality: (N, d) float32 and which items have a row
    (an empty cell or an item without a row: a zero row, marked missing). An item listed twice
    keeps its first row; rows of items outside the catalogue are dropped."""
    features, present = {}, {}
    ids = lookup(items, f.ids(ITEM))
    _, first = np.unique(ids, return_index=True)
    first = first[ids[first] >= 0]
    for col, ftype in f.types.items():
        if ftype != "float_seq":
            continue
        text = pc.utf8_trim_whitespace(f.table.column(col))
        filled = np.asarray(pc.greater(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False), dtype=bool)
        parts = pc.split_pattern_regex(text, r"\s+")
        lengths = np.asarray(pc.list_value_length(parts).to_numpy(zero_copy_only=False))
        d = int(lengths[filled][0]) if filled.any() else 0
        if (lengths[filled] != d).any():
            i = first_true(filled & (lengths != d))
            raise f.error(f"{int(lengths[i])} numbers, the first filled row has {d} (every vector has one length)",
                          row=i, column=col)
        if d == 0:
            continue
        try:
            flat = np.asarray(pc.cast(pc.list_flatten(parts.filter(pa.array(filled))), pa.float32())
                              .to_numpy(zero_copy_only=False), dtype=np.float32)
        except pa.ArrowException:
            rows = np.flatnonzero(filled)
            i = int(rows[first_failing(parts.filter(pa.array(filled)),
                                        lambda a: pc.cast(pc.list_flatten(a), pa.float32()))])
            raise f.error(f"{_show(f.cell(col, i))} is not a list of numbers", row=i, column=col) from None
        vectors = flat.reshape(-1, d)
        rows = np.flatnonzero(filled)
        if not np.isfinite(vectors).all():
            i = int(rows[first_true(~np.isfinite(vectors).all(1))])
            raise f.error(f"{_show(f.cell(col, i))} holds NaN or inf", row=i, column=col)
        take = np.isin(rows, first)  # an item's first row only
        x = np.zeros((len(items), d), np.float32)
        x[ids[rows[take]]] = vectors[take]
        mask = np.zeros(len(items), bool)
        mask[ids[rows[take]]] = True
        features[col], present[col] = x, mask
    return features, present


def _item_metadata(f: TextFile, tok: pa.ChunkedArray, items: pa.Array) -> pa.Table:
    """items.parquet: contiguous item id plus every field; RecBole's ml-100k names mapped to
    title / year / genres (a year that is not a number, like item 1412's 'V', becomes null).
    An item listed twice keeps its first row; rows of items outside the catalogue are dropped."""
    ids = lookup(items, tok)
    cols: dict[str, pa.Array | pa.ChunkedArray] = {"item": pa.array(ids)}
    rename = {"movie_title": "title", "release_year": "year", "class": "genres"}
    for col, ftype in f.types.items():
        if col == ITEM:
            continue
        values = f.table.column(col)
        out = rename.get(col, col)
        if out in cols:  # a name that collides with 'item' or a renamed field keeps its own name
            out = col if col not in cols else f"{col}_"
        if out == "year":
            values = pc.utf8_trim_whitespace(values)
            cols[out] = pc.cast(pc.if_else(pc.match_substring_regex(values, r"^\d{1,4}$"), values, None), pa.int32())
        elif ftype == "token_seq" and out == "genres":
            cols[out] = pc.split_pattern(values, " ")
        elif ftype == "float":
            cols[out] = f.numbers(values, 0, col, nullable=True)
        elif ftype == "float_seq":
            continue  # a modality (float_seq_features), not metadata
        else:
            cols[out] = values
    table = pa.table(cols)
    _, first = np.unique(ids, return_index=True)
    first = first[ids[first] >= 0]  # rows of items outside the catalogue are dropped
    return table.take(pa.array(np.sort(first))).sort_by("item")
