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
        "coverage": {name: float(ds.present(name).mean()) for name in ds.features},
        "split_rule": ds.provenance.get("split"),
        "split_seed": ds.split_seed,
        "threshold": ds.provenance.get("threshold"),
        "feedback": ds.provenance.get("feedback"),
        # the feedback rule's count sits beside the rule (every importer); the rest under "import"
        "dropped": {k: v for k, v in ((ds.provenance.get("import") or {})
                                      | {"threshold_dropped": ds.provenance.get("threshold_dropped")}).items()
                    if k.endswith("_dropped") and v},
    }


def format_summary(s: dict[str, Any]) -> str:
    cover = s.get("coverage", {})
    mods = ", ".join(f"{m} ({d}-d, " + ("all items" if cover.get(m, 1.0) >= 1.0 else f"{cover[m]:.1%} of items, the "
                                        "rest marked missing") + ")" for m, d in s["modalities"].items()) or "none"
    rule = s.get("split_rule") or ("per-user random 8:1:1" if s["split_seed"] is not None else "given by the source")
    lines = [
        f"dataset       {s['name']}",
        f"users         {s['users']:,}",
        f"items         {s['items']:,}",
        f"interactions  {s['interactions']:,}  (density {s['density']:.4%})",
        f"split         train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}  ({rule}"
        + (f", seed {s['split_seed']})" if s["split_seed"] is not None else ")"),
        f"kg            {s['triples']:,} triples, {s['entities']:,} entities, {s['relations']} relations",
        f"linked items  {s['linked_items']:,} ({s['kg_coverage']:.1%} of items)",
        f"modalities    {mods}",
    ]
    if s.get("feedback"):  # how explicit feedback became positives (importers' --threshold)
        lines.append(f"feedback      {s['feedback']}")
    what = {"threshold_dropped": "rows below --threshold", "duplicates_dropped": "repeated (user, item) rows",
            "cold_rows_dropped": "valid/test rows of users without a training row",
            "item_rows_dropped": "metadata rows of items without interactions",
            "links_dropped": "KG links of items without interactions"}
    if s.get("dropped"):  # what `data import table` left out, and why
        lines.append("dropped       " + "; ".join(f"{n:,} {what.get(k, k)}" for k, n in s["dropped"].items()))
    return "\n".join(lines)
