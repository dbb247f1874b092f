"""The fan-out grammar of train.fanout: per-hop neighbour counts, optionally per relation.

A leaf module (it imports nothing but slifmr.errors), so the configuration can check a fan-out
without importing the samplers. Edge types follow PyG's (source, relation, destination)."""

from __future__ import annotations

from slifmr.errors import ConfigError

EdgeType = tuple[str, str, str]
RATES: EdgeType = ("user", "rates", "item")
RATED_BY: EdgeType = ("item", "rated_by", "user")
CORRELATES: EdgeType = ("item", "correlates", "item")
SIMILAR: EdgeType = ("item", "similar", "item")
KG_TYPES: tuple[EdgeType, ...] = tuple((s, "kg", d) for s in ("item", "entity") for d in ("item", "entity"))
VIEW_EDGE_TYPES: dict[str, tuple[EdgeType, ...]] = {"cf": (RATES, RATED_BY, CORRELATES), "mm": (SIMILAR,), "kg": KG_TYPES}


def parse_fanout(spec: str, edge_types: list[EdgeType]) -> dict[EdgeType, list[int]]:
    """'10,5' (every edge type, per hop) or '10,5;kg=5,0;similar=20,0': per-hop fan-outs,
    optionally overridden per relation (rates, rated_by, correlates, similar, kg). -1 takes
    every neighbour. Every edge type gets the same number of hops."""
    parts = [p.strip() for p in spec.split(";") if p.strip()]

    def hops(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"train.fanout {spec!r}: expected integers like 10,5, got {text!r}") from None
        if not values or any(v < -1 for v in values):
            raise ConfigError(f"train.fanout {spec!r}: fan-outs are integers >= -1 (-1 = all neighbours)")
        return values

    if not parts or "=" in parts[0]:
        raise ConfigError(f"train.fanout {spec!r}: start with the per-hop default, e.g. 10,5")
    default = hops(parts[0])
    out = {et: list(default) for et in edge_types}
    rels = {et[1] for et in edge_types} | {"rates", "rated_by", "correlates", "similar", "kg"}
    for part in parts[1:]:
        rel, sep, text = part.partition("=")
        if not sep or rel.strip() not in rels:
            raise ConfigError(f"train.fanout {spec!r}: {part!r} is not relation=fan-outs "
                              f"(relations: {', '.join(sorted(rels))})")
        values = hops(text)
        if len(values) != len(default):
            raise ConfigError(f"train.fanout {spec!r}: {rel.strip()} has {len(values)} hops, the default {len(default)}")
        for et in edge_types:
            if et[1] == rel.strip():
                out[et] = values
    return out


def view_fanouts(spec: str, layers: dict[str, int]) -> dict[EdgeType, list[int]]:
    """Fan-outs of every edge type of the active views (`layers`: view -> its layer count).

    The spec needs as many hops as the deepest view; a view's edges are not sampled past its
    own depth (fan-out 0 there), so a 1-layer KG view does not widen the 2-hop CF subgraph."""
    edge_types = [et for v in layers for et in VIEW_EDGE_TYPES[v]]
    out = parse_fanout(spec, edge_types)
    hops = len(next(iter(out.values())))
    deepest = max(layers, key=lambda v: layers[v])
    if hops != max(layers[deepest], 1):
        raise ConfigError(f"train.fanout {spec!r} has {hops} hop(s); the {deepest} view has {layers[deepest]} layers "
                          f"(give one fan-out per layer of the deepest view)")
    for view, n in layers.items():
        for et in VIEW_EDGE_TYPES[view]:
            out[et] = [f if h < n else 0 for h, f in enumerate(out[et])]
    return out


def history_fanouts(spec: str, layers: dict[str, int]) -> dict[EdgeType, list[int]]:
    """One hop per step: the first hop of `train.fanout` ('10,5;kg=5,0' -> 10, kg 5) for each
    edge type of the views in `layers` (view -> its layer count), as one-hop fan-outs for the
    sampler (-1: every neighbour, exact). A view without layers samples nothing (fan-out 0)."""
    edge_types = [et for v in layers for et in VIEW_EDGE_TYPES[v]]
    out = parse_fanout(spec, edge_types)
    one = {et: [out[et][0]] for et in edge_types}
    if all(f == [0] for f in one.values()):
        raise ConfigError(f"train.fanout {spec!r}: with train.sampling=history the first hop's fan-out samples "
                          "each layer; it must not be 0 everywhere")
    for view, n in layers.items():
        for et in VIEW_EDGE_TYPES[view]:
            one[et] = one[et] if n > 0 else [0]
    return one


def sampling_fanouts(sampling: str, spec: str, view_layers: dict[str, int]) -> dict[EdgeType, list[int]] | None:
    """The sampler's fan-outs for train.sampling `sampling`: none (full), per hop and edge type
    (neighbor), or one hop per edge type of the active views (history). `view_layers`: view ->
    its layer count. Raises ConfigError for a spec that does not fit the views."""
    if sampling == "neighbor":
        return view_fanouts(spec, view_layers)
    if sampling == "history":
        return history_fanouts(spec, view_layers)
    return None
