"""`slifmr data info`: what a dataset folder holds."""

from __future__ import annotations

from typing import Any

import numpy as np

from slifmr.data.format import TEST, TRAIN, VALID, Dataset


def summary(ds: Dataset) -> dict[str, Any]:
    linked = np.unique(ds.item_entity[:, 0]).size if ds.item_entity.size else 0
    return {
        "name": ds.name,
        "users": ds.num_users,
        "items": ds.num_items,
        "interactions": ds.num_interactions,
        "density": ds.num_interactions / (ds.num_users * ds.num_items),
        "train": int((ds.split == TRAIN).sum()),
        "valid": int((ds.split == VALID).sum()),
        "test": int((ds.split == TEST).sum()),
        "triples": int(ds.kg.shape[0]),
        "entities": ds.num_entities,
        "relations": len(ds.relation_names),
        "linked_items": int(linked),
        "kg_coverage": linked / ds.num_items,
        "modalities": {name: int(x.shape[1]) for name, x in ds.features.items()},
        "split_seed": ds.split_seed,
        "threshold": ds.provenance.get("threshold"),
        "feedback": ds.provenance.get("feedback"),
    }


def format_summary(s: dict[str, Any]) -> str:
    mods = ", ".join(f"{m} ({d}-d, all {s['items']:,} items)" for m, d in s["modalities"].items()) or "none"
    lines = [
        f"dataset       {s['name']}",
        f"users         {s['users']:,}",
        f"items         {s['items']:,}",
        f"interactions  {s['interactions']:,}  (density {s['density']:.4%})",
        f"split         train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}"
        + (f"  (seed {s['split_seed']})" if s["split_seed"] is not None else "  (given by the source)"),
        f"kg            {s['triples']:,} triples, {s['entities']:,} entities, {s['relations']} relations",
        f"linked items  {s['linked_items']:,} ({s['kg_coverage']:.1%} of items)",
        f"modalities    {mods}",
    ]
    if s.get("feedback"):  # how explicit feedback became positives (importers' --threshold)
        lines.append(f"feedback      {s['feedback']}")
    return "\n".join(lines)
