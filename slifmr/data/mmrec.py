"""Importer for MMRec's dataset layout: <name>.inter (tab-separated, header userID, itemID,
..., x_label with 0 train / 1 valid / 2 test), image_feat.npy and text_feat.npy (row i =
item i), and optionally a KG in RecBole's .kg/.link format beside them (item_id = MMRec's
itemID).

The text rules are RecBole's importer's (slifmr/data/recbole.py): UTF-8 with or without a
byte-order mark, blank lines skipped, errors naming file, 1-based line (header = line 1),
column and raw value, warnings only once everything has passed. The rows go through the import
pipeline every importer shares (slifmr/data/pipeline.py), with two stages of MMRec's own:
integer ids (`IntegerIds`) and x_label as the split column. So:

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
  thresholds={"rating": 4} keeps rows with rating >= 4 (slifmr/data/feedback.py).
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

from slifmr.data.format import Dataset, check_feature_values
from slifmr.data.ids import IntegerIds
from slifmr.data.pipeline import InteractionColumns, Split, emit, read_interactions
from slifmr.data.recbole import import_kg, read_text
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
    """Import an MMRec dataset folder into a `Dataset` (not yet written): its .inter file through
    the import pipeline (slifmr/data/pipeline.py) with integer ids and x_label as the split, the
    feature files, and a KG in RecBole's format if present. Raises DataError naming the file,
    line, column and raw value of the first bad cell."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "folder does not exist")
    if name is None:
        inters = sorted(root.glob("*.inter"))
        if not inters:
            raise DataError(str(root), "no .inter file in this folder")
        name = inters[0].stem
    f = read_text(root / f"{name}.inter", _plain_header, (USER, ITEM, LABEL))
    features = {m: load_features(root / fname) for m, fname in FEATURE_FILES.items() if (root / fname).exists()}
    item_ids = IntegerIds()
    if features:
        rows = {m: x.shape[0] for m, x in features.items()}
        num_items = max(rows.values())
        for m, r in rows.items():
            if r != num_items:
                raise DataError(str(root / FEATURE_FILES[m]), f"has {r} rows but other features have {num_items}: one row per item")
        # items index the feature rows: kept as they are
        item_ids = IntegerIds(num_items, "item {raw} has no feature row (the features have {n} rows, items 0..{last})")
    cols = InteractionColumns(USER, ITEM, TIME if f.has(TIME) else None, LABEL, dict(thresholds or {}))
    inter = read_interactions([f], cols, Split("column", codes="integers", values=("0", "1", "2")),
                              users=IntegerIds(), items=item_ids)
    raw_users = np.asarray(inter.users.to_numpy(zero_copy_only=False), dtype=np.int64)
    raw_items = np.asarray(inter.items.to_numpy(zero_copy_only=False), dtype=np.int64)
    kg, links, entities, relations, links_dropped = import_kg(root, name, pa.array(raw_items.astype(str)))
    emit(inter.warnings, inter.notes["feedback_log"])
    ids = {"users": raw_users, "items": raw_items} | ({"entities": entities.to_numpy(zero_copy_only=False).astype(object)} if len(entities) else {})
    ds = inter.to_dataset(name, {"importer": "mmrec", "source": str(root.resolve()), "presplit": True}, ids=ids,
                          features=features, kg=kg, item_entity=links, num_entities=len(entities),
                          relation_names=relations)
    ds.provenance["import"]["links_dropped"] = links_dropped
    return ds
