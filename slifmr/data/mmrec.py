"""Importer for MMRec's dataset layout: <name>.inter (tab-separated, header userID, itemID,
..., x_label with 0 train / 1 valid / 2 test), image_feat.npy and text_feat.npy (row i =
item i), and optionally a KG in RecBole's .kg/.link format beside them (item_id = MMRec's
itemID).

The text rules are RecBole's importer's (slifmr/data/recbole.py): UTF-8 with or without a
byte-order mark, blank lines skipped, errors naming file, 1-based line (header = line 1),
column and raw value, warnings only once everything has passed. On top of them:

* userID, itemID and x_label are integers ('007' is 7; surrounding whitespace ignored);
  ids are non-negative and below 2**63, x_label is 0, 1 or 2. Ids are never used as sizes
  or indices as they are: users are remapped to contiguous ids in numeric order (a set that
  already is 0..M-1 maps to itself) and their raw ids are kept in ids["users"]. Items index
  the feature rows, so with features an itemID must be below the feature row count and is
  kept as it is (ids["items"] is then 0..N-1); without features items are remapped like
  users.
* A timestamp column must hold numeric seconds: text dates ('Mar 1 2018') and ISO dates
  ('2018-03-01') are refused with the line, never converted to something else.
* Feedback: every kept row is a positive; a `rating` column is reported as ignored (MMRec's
  protocol), `label` holding values <= 0 is refused unless a threshold is given;
  thresholds={"rating": 4} keeps rows with rating >= 4 (see recbole.feedback_filter).
* Each split (x_label 0, 1, 2) must keep a row and every user needs a training row; a pair
  repeated across splits is kept in the earliest split.
* Feature files: a 2-D array of a real number type (float or integer, converted to
  float32), one row per item, at least one column, every value finite and within
  +-format.FEATURE_LIMIT; the same row count in every modality. Anything else (1-D, object or string arrays, .npz archives,
  truncated files) is one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from slifmr.data.format import TEST, Dataset, check_feature_values
from slifmr.data.recbole import (
    TIME_HINT,
    IdMap,
    check_splits,
    dedupe_pairs,
    emit,
    feedback_filter,
    import_kg,
    read_text,
)
from slifmr.errors import DataError

USER, ITEM, LABEL, TIME = "userID", "itemID", "x_label", "timestamp"
FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}
_LOAD_ERRORS = (ValueError, OSError, EOFError, SyntaxError, TypeError, KeyError, IndexError, OverflowError)


def _plain_header(cells: list[str], path: Path) -> dict[str, str]:
    types: dict[str, str] = {}
    for cell in cells:
        if not cell:
            raise DataError(f"{path}, line 1", "the header has an empty column name")
        if cell in types:
            raise DataError(f"{path}, line 1", "column is named twice in the header", column=cell)
        types[cell] = "text"
    return types


def load_features(fp: Path) -> np.ndarray:
    """One modality's (num_items, d) float32 array, checked; errors name the file and row."""
    try:
        x = np.load(fp, mmap_mode="r", allow_pickle=False)
    except _LOAD_ERRORS as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise DataError(str(fp), f"not a readable .npy array ({first})") from None
    if not isinstance(x, np.ndarray):
        if hasattr(x, "close"):
            x.close()
        raise DataError(str(fp), "is an .npz archive, not a .npy array")
    if x.ndim != 2:
        raise DataError(str(fp), f"has shape {tuple(x.shape)}, expected a 2-D array (items, dim): one row per item")
    if x.dtype.kind not in "fiu":
        raise DataError(str(fp), f"dtype {x.dtype} is not a real number type (float or integer)")
    if 0 in x.shape:
        raise DataError(str(fp), f"has shape {tuple(x.shape)}: no feature {'columns' if x.shape[0] else 'rows'}")
    check_feature_values(x, fp)  # NaN, inf, |v| > FEATURE_LIMIT: row (= item) and column named
    return np.array(x, dtype=np.float32, order="C")


def import_mmrec(root: str | Path, name: str | None = None, thresholds: dict[str, float] | None = None) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "folder does not exist")
    if name is None:
        inters = sorted(root.glob("*.inter"))
        if not inters:
            raise DataError(str(root), "no .inter file in this folder")
        name = inters[0].stem
    path = root / f"{name}.inter"
    f = read_text(path, _plain_header, (USER, ITEM, LABEL))
    user_raw, item_raw = f.ints(USER), f.ints(ITEM)
    split = f.ints(LABEL, what="x_label")
    if (split > TEST).any():
        i = int(np.flatnonzero(split > TEST)[0])
        raise f.error(f"x_label {f.cell(LABEL, i)!r} is not 0 (train), 1 (valid) or 2 (test)", row=i, column=LABEL)
    ts = f.numbers(TIME, TIME_HINT) if f.has(TIME) else None
    masks, feedback, infos = feedback_filter([f], thresholds, (USER, ITEM, LABEL))

    features = {m: load_features(root / fname) for m, fname in FEATURE_FILES.items() if (root / fname).exists()}
    if features:
        rows = {m: x.shape[0] for m, x in features.items()}
        num_items = max(rows.values())
        for m, r in rows.items():
            if r != num_items:
                raise DataError(str(root / FEATURE_FILES[m]), f"has {r} rows but other features have {num_items}: one row per item")
        bad = item_raw >= num_items
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise f.error(f"item {f.cell(ITEM, i)!r} has no feature row (the features have {num_items} rows, "
                          f"items 0..{num_items - 1})", row=i, column=ITEM)

    kept = np.flatnonzero(masks[0])
    if kept.size == 0:
        raise f.error("has no data rows" if f.num_rows == 0 else
                      f"--threshold keeps none of its {f.num_rows:,} rows")
    raw_users, user = np.unique(user_raw[kept], return_inverse=True)
    if features:
        raw_items, item = np.arange(num_items, dtype=np.int64), item_raw[kept]
    else:
        raw_items, item = np.unique(item_raw[kept], return_inverse=True)
        num_items = raw_items.size
    user, item = user.astype(np.int64).ravel(), item.astype(np.int64).ravel()
    split = split[kept].astype(np.int8)
    keep, dropped = dedupe_pairs(user, item, num_items, split)
    warnings = []
    if dropped.size:
        j = dropped[0]
        warnings.append(f"{path}: dropped {dropped.size:,} duplicate (user, item) rows, keeping the one in the "
                        f"earliest split (user {raw_users[user[j]]}, item {raw_items[item[j]]} is one)")
    user, item, split, src_row = user[keep], item[keep], split[keep], kept[keep]

    def why_empty(s: int) -> str:
        if f.num_rows == 0:
            return "the file has no data rows"
        if not (f.ints(LABEL, what="x_label") == s).any():
            return f"no row has x_label {s}"
        if not ((f.ints(LABEL, what="x_label") == s) & masks[0]).any():
            return f"--threshold keeps none of its rows with x_label {s}"
        return f"each row with x_label {s} repeats a (user, item) pair of an earlier split"

    check_splits(split, user, raw_users.size, np.zeros(user.size, np.int64), src_row, [f], lambda s: f, USER, why_empty,
                 "row with x_label 0")

    items = IdMap()
    items.add(pa.array(raw_items.astype(str)))
    kg, links, entities, relations = import_kg(root, name, items)
    emit(warnings, infos)
    ids = {"users": raw_users, "items": raw_items}
    if len(entities):
        ids["entities"] = entities.array()
    return Dataset(
        name=name,
        num_users=int(raw_users.size),
        num_items=int(num_items),
        user=user,
        item=item,
        split=split,
        timestamp=ts[kept][keep] if ts is not None else None,
        features=features,
        kg=kg,
        item_entity=links,
        num_entities=len(entities),
        relation_names=relations,
        ids=ids,
        provenance={"importer": "mmrec", "source": str(root.resolve()), "presplit": True, **feedback},
    )

