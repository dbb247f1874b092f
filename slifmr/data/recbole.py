"""Importer for RecBole atomic files (.inter/.item/.user/.kg/.link, and pre-split
<name>.train.inter/.valid.inter/.test.inter as RecBole's benchmark_filename reads them).

Atomic files are tab-separated with a header of `name:type` cells; types are token,
token_seq (space-separated), float and float_seq. Ids are remapped to contiguous int64.
Duplicate (user, item) pairs are dropped with a warning, keeping the first (RecBole keeps
repeated ratings as separate rows; an implicit-feedback ranker needs each pair once).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from slifmr import log
from slifmr.data.format import Dataset
from slifmr.data.split import split_per_user
from slifmr.errors import DataError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
USER, ITEM, TIME = "user_id", "item_id", "timestamp"
HEAD, RELATION, TAIL, ENTITY = "head_id", "relation_id", "tail_id", "entity_id"


def read_atomic(path: Path, required: tuple[str, ...] = ()) -> tuple[pa.Table, dict[str, str]]:
    """Read one atomic file as string columns; returns (table, {field: type})."""
    if not path.exists():
        raise DataError(str(path), "file is missing")
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\n\r").split("\t")
    types: dict[str, str] = {}
    for cell in header:
        name, _, ftype = cell.partition(":")
        if ftype not in FIELD_TYPES:
            raise DataError(str(path), f"header cell '{cell}' is not 'name:type' with type in {FIELD_TYPES}", row=0)
        types[name] = ftype
    for col in required:
        if col not in types:
            raise DataError(str(path), "column is missing from the header", column=col)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=list(types), skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in types}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as e:
        raise DataError(str(path), f"malformed row ({str(e).splitlines()[0]})") from e
    for col in required:
        empty = pc.equal(pc.utf8_length(table.column(col)), 0).to_numpy(zero_copy_only=False)
        if empty.any():
            raise DataError(str(path), "empty id", column=col, row=int(np.flatnonzero(empty)[0]) + 1)
    return table, types


def float_column(table: pa.Table, path: Path, col: str) -> np.ndarray:
    """Parse a `float` field; the error names the first row that is not a number."""
    raw = table.column(col).to_numpy(zero_copy_only=False)
    try:
        return raw.astype(np.float64)
    except ValueError:
        for i, v in enumerate(raw):
            try:
                float(v)
            except ValueError:
                raise DataError(str(path), f"'{v}' is not a number", column=col, row=i + 1) from None
        raise


class IdMap:
    """Raw token -> contiguous int64, in the order tokens are first added."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, tokens: np.ndarray) -> None:
        for t in dict.fromkeys(tokens.tolist()):
            if t not in self.index:
                self.index[t] = len(self.tokens)
                self.tokens.append(t)

    def lookup(self, tokens: np.ndarray, path: Path, col: str, what: str) -> np.ndarray:
        out = np.fromiter((self.index.get(t, -1) for t in tokens.tolist()), np.int64, len(tokens))
        if (out < 0).any():
            i = int(np.flatnonzero(out < 0)[0])
            raise DataError(str(path), f"unknown {what} '{tokens[i]}'", column=col, row=i + 1)
        return out

    def __len__(self) -> int:
        return len(self.tokens)

    def array(self) -> np.ndarray:
        return np.array(self.tokens, dtype=object)


def dedupe_pairs(user: np.ndarray, item: np.ndarray, num_items: int, path: Path) -> np.ndarray:
    """Indices of the first occurrence of each (user, item) pair; warns if any were dropped."""
    _, first = np.unique(user * np.int64(num_items) + item, return_index=True)
    first.sort()
    if first.size < user.size:
        dup = np.setdiff1d(np.arange(user.size), first)
        log.warning(f"{path}: dropped {dup.size} duplicate (user, item) rows, keeping the first (row {dup[0] + 1} is one)")
    return first


def _inter_files(root: Path, name: str) -> list[Path]:
    pre = [root / f"{name}.{s}.inter" for s in ("train", "valid", "test")]
    if all(p.exists() for p in pre):
        return pre
    single = root / f"{name}.inter"
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


def import_recbole(root: str | Path, name: str | None = None, split_seed: int = 2026) -> Dataset:
    """Import a RecBole atomic dataset folder into a `Dataset` (not yet written)."""
    root = Path(root)
    name = name or dataset_name(root)
    files = _inter_files(root, name)
    users, items = IdMap(), IdMap()
    tables = []
    for p in files:
        t, types = read_atomic(p, (USER, ITEM))
        tables.append((p, t, types))
        users.add(t.column(USER).to_numpy(zero_copy_only=False))
        items.add(t.column(ITEM).to_numpy(zero_copy_only=False))

    item_table = None
    item_path = root / f"{name}.item"
    if item_path.exists():
        t, types = read_atomic(item_path, (ITEM,))
        items.add(t.column(ITEM).to_numpy(zero_copy_only=False))
        item_table = _item_metadata(t, types, items, item_path)

    u_parts, i_parts, s_parts, ts_parts = [], [], [], []
    for code, (p, t, types) in enumerate(tables):
        u_parts.append(users.lookup(t.column(USER).to_numpy(zero_copy_only=False), p, USER, "user"))
        i_parts.append(items.lookup(t.column(ITEM).to_numpy(zero_copy_only=False), p, ITEM, "item"))
        s_parts.append(np.full(t.num_rows, code, np.int8))
        if TIME in types:
            ts_parts.append(float_column(t, p, TIME))
    user, item, split = np.concatenate(u_parts), np.concatenate(i_parts), np.concatenate(s_parts)
    ts = np.concatenate(ts_parts) if len(ts_parts) == len(tables) else None
    keep = dedupe_pairs(user, item, len(items), files[0])
    user, item, split = user[keep], item[keep], split[keep]
    ts = ts[keep] if ts is not None else None
    presplit = len(files) == 3
    if not presplit:
        split = split_per_user(user, split_seed)

    kg, links, entities, relations = import_kg(root, name, items)
    return Dataset(
        name=name,
        num_users=len(users),
        num_items=len(items),
        user=user,
        item=item,
        split=split,
        timestamp=ts,
        items=item_table,
        kg=kg,
        item_entity=links,
        num_entities=len(entities),
        relation_names=relations,
        ids={"users": users.array(), "items": items.array(), "entities": entities.array()},
        provenance={"importer": "recbole", "source": str(root.resolve()), "presplit": presplit},
        split_seed=None if presplit else split_seed,
    )


def import_kg(root: Path, name: str, items: IdMap) -> tuple[np.ndarray, np.ndarray, IdMap, list[str]]:
    """<name>.kg and <name>.link, if present: (triples (T,3), links (L,2), entities, relations)."""
    entities, relations = IdMap(), IdMap()
    kg = np.zeros((0, 3), np.int64)
    links = np.zeros((0, 2), np.int64)
    kg_path, link_path = root / f"{name}.kg", root / f"{name}.link"
    if kg_path.exists():
        t, _ = read_atomic(kg_path, (HEAD, RELATION, TAIL))
        h, r, tl = (t.column(c).to_numpy(zero_copy_only=False) for c in (HEAD, RELATION, TAIL))
        entities.add(np.concatenate([h, tl]))
        relations.add(r)
        kg = np.stack([
            entities.lookup(h, kg_path, HEAD, "entity"),
            relations.lookup(r, kg_path, RELATION, "relation"),
            entities.lookup(tl, kg_path, TAIL, "entity"),
        ], axis=1)
    if link_path.exists():
        t, _ = read_atomic(link_path, (ITEM, ENTITY))
        ent = t.column(ENTITY).to_numpy(zero_copy_only=False)
        entities.add(ent)
        item_ids = items.lookup(t.column(ITEM).to_numpy(zero_copy_only=False), link_path, ITEM, "item (not in .inter or .item)")
        links = np.stack([item_ids, entities.lookup(ent, link_path, ENTITY, "entity")], axis=1)
    return kg, links, entities, list(relations.tokens)


def _item_metadata(t: pa.Table, types: dict[str, str], items: IdMap, path: Path) -> pa.Table:
    """items.parquet: contiguous item id plus every field; RecBole's ml-100k names mapped to
    title / year / genres (a year that is not a number, like item 1412's 'V', becomes null)."""
    ids = items.lookup(t.column(ITEM).to_numpy(zero_copy_only=False), path, ITEM, "item")
    cols: dict[str, pa.Array] = {"item": pa.array(ids)}
    rename = {"movie_title": "title", "release_year": "year", "class": "genres"}
    for col, ftype in types.items():
        if col == ITEM:
            continue
        values = t.column(col)
        out = rename.get(col, col)
        if out == "year":
            cols[out] = pc.cast(pc.if_else(pc.match_substring_regex(values, r"^\d{1,4}$"), values, None), pa.int32())
        elif ftype == "token_seq" and out == "genres":
            cols[out] = pc.split_pattern(values, " ")
        elif ftype == "float":
            cols[out] = pa.array(float_column(t, path, col))
        else:
            cols[out] = values
    table = pa.table(cols)
    _, first = np.unique(ids, return_index=True)
    return table.take(pa.array(np.sort(first))).sort_by("item")
