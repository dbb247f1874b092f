"""Importer for MMRec's dataset layout: <name>.inter (tab-separated, header userID, itemID,
..., x_label with 0 train / 1 valid / 2 test), image_feat.npy and text_feat.npy (row i =
item i), and optionally a KG in RecBole's .kg/.link format beside them (item_id = MMRec's
itemID). MMRec ids are already contiguous integers; they are kept, so feature rows align.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from slifmr.data.format import Dataset
from slifmr.data.recbole import IdMap, dedupe_pairs, import_kg
from slifmr.errors import DataError

USER, ITEM, LABEL = "userID", "itemID", "x_label"
FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}


def _int_ids(table: pa.Table, path: Path, col: str) -> np.ndarray:
    raw = table.column(col).to_numpy(zero_copy_only=False)
    try:
        ids = raw.astype(np.int64)
    except ValueError:
        bad = next(i for i, v in enumerate(raw) if not str(v).lstrip("-").isdigit())
        raise DataError(str(path), f"id '{raw[bad]}' is not an integer", column=col, row=bad + 1) from None
    if (ids < 0).any():
        i = int(np.flatnonzero(ids < 0)[0])
        raise DataError(str(path), f"negative id {ids[i]}", column=col, row=i + 1)
    return ids


def import_mmrec(root: str | Path, name: str | None = None) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(str(root), "folder does not exist")
    if name is None:
        inters = sorted(root.glob("*.inter"))
        if not inters:
            raise DataError(str(root), "no .inter file in this folder")
        name = inters[0].stem
    path = root / f"{name}.inter"
    if not path.exists():
        raise DataError(str(path), "file is missing")
    try:
        t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"),
                           convert_options=pacsv.ConvertOptions(column_types={USER: pa.string(), ITEM: pa.string(), LABEL: pa.string()}))
    except pa.ArrowInvalid as e:
        raise DataError(str(path), f"malformed row ({str(e).splitlines()[0]})") from e
    for col in (USER, ITEM, LABEL):
        if col not in t.column_names:
            raise DataError(str(path), "column is missing", column=col)
    user, item, split = (_int_ids(t, path, c) for c in (USER, ITEM, LABEL))
    bad = split > 2
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(str(path), f"x_label {split[i]} is not 0, 1 or 2", column=LABEL, row=i + 1)

    features = {}
    for modality, fname in FEATURE_FILES.items():
        fp = root / fname
        if fp.exists():
            try:
                features[modality] = np.load(fp, allow_pickle=False).astype(np.float32, copy=False)
            except (ValueError, OSError) as e:
                raise DataError(str(fp), f"not a readable .npy array ({e})") from e
    num_items = int(item.max()) + 1
    if features:
        rows = {m: x.shape[0] for m, x in features.items()}
        num_items = max(rows.values())
        for m, r in rows.items():
            if r != num_items:
                raise DataError(str(root / FEATURE_FILES[m]), f"has {r} rows but other features have {num_items}: one row per item")
        if item.max() >= num_items:
            i = int(np.argmax(item))
            raise DataError(str(path), f"item {item[i]} has no feature row (features have {num_items} rows)", column=ITEM, row=i + 1)
    num_users = int(user.max()) + 1
    keep = dedupe_pairs(user, item, num_items, path)

    items = IdMap()
    items.add(np.arange(num_items).astype(str))
    kg, links, entities, relations = import_kg(root, name, items)
    ts = None
    if "timestamp" in t.column_names:
        ts = t.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)[keep]
    return Dataset(
        name=name,
        num_users=num_users,
        num_items=num_items,
        user=user[keep],
        item=item[keep],
        split=split[keep].astype(np.int8),
        timestamp=ts,
        features=features,
        kg=kg,
        item_entity=links,
        num_entities=len(entities),
        relation_names=relations,
        ids={"entities": entities.array()} if len(entities) else {},
        provenance={"importer": "mmrec", "source": str(root.resolve()), "presplit": True},
    )
