"""A seeded synthetic dataset generator for scale and fault tests.

Items belong to latent clusters; each user prefers a few clusters. Interactions are drawn
cluster-first, then by item popularity inside the cluster (power-law user activity and item
popularity). Modality features are noisy views of the item's cluster, and KG tails are
drawn from a cluster-specific pool, so the auxiliary views carry real signal. Vectorised:
10^6 users and 10^7 interactions take about a minute and a few GB.
"""

from __future__ import annotations

import numpy as np

from slifmr.data.format import Dataset
from slifmr.data.split import split_per_user


def _power_law(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    w = rng.permutation(np.arange(1, n + 1, dtype=np.float64) ** -exponent)
    return w / w.sum()


def synthesize(
    users: int = 1000,
    items: int = 500,
    interactions: int = 20000,
    entities: int = 2000,
    triples: int = 10000,
    relations: int = 8,
    modalities: tuple[tuple[str, int], ...] = (("text", 32), ("image", 64)),
    clusters: int = 20,
    link_fraction: float = 0.9,
    noise: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Generate a dataset; `modalities` is ((name, dim), ...)."""
    if min(users, items, interactions) <= 0:
        raise ValueError("users, items and interactions must be positive")
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, clusters, items)
    # user preferences: a main cluster and a second one
    user_main = rng.integers(0, clusters, users)
    user_second = rng.integers(0, clusters, users)

    # interactions per user ~ power law, at least 1, summing to about `interactions`
    activity = _power_law(rng, users, 0.8)
    cap = max(1, items // 4)  # nobody interacts with more than a quarter of the catalogue
    target = 1.25 * interactions  # oversampled: duplicates are removed below
    per_user = np.ones(users, np.int64)
    for _ in range(4):  # rescale so the capped counts still sum to the target
        per_user = np.clip(np.floor(activity * target), 1, cap).astype(np.int64)
        target *= 1.25 * interactions / max(per_user.sum(), 1)
    user = np.repeat(np.arange(users, dtype=np.int64), per_user)
    n = user.size

    popularity = _power_law(rng, items, 0.9)
    by_cluster = np.argsort(item_cluster, kind="stable")
    cum = np.cumsum(popularity[by_cluster])
    starts = np.searchsorted(item_cluster[by_cluster], np.arange(clusters))
    ends = np.r_[starts[1:], items]
    lo = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    hi = cum[np.maximum(ends - 1, 0)]
    cluster = np.where(rng.random(n) < 0.7, user_main[user], user_second[user])
    cluster = np.where(rng.random(n) < 0.15, rng.integers(0, clusters, n), cluster)  # exploration
    empty = ends <= starts
    cluster = np.where(empty[cluster], item_cluster[rng.integers(0, items, n)], cluster)
    r = lo[cluster] + rng.random(n) * (hi[cluster] - lo[cluster])
    item = by_cluster[np.minimum(np.searchsorted(cum, r, side="right"), items - 1)]

    _, first = np.unique(user * np.int64(items) + item, return_index=True)
    if first.size > interactions:  # trim to the requested count; every user keeps one row
        priority = rng.random(first.size)
        user_sorted = user[first]
        order = np.argsort(user_sorted, kind="stable")
        lead = np.r_[True, user_sorted[order][1:] != user_sorted[order][:-1]]
        priority[order[lead]] = -1.0
        first = first[np.argsort(priority, kind="stable")[:interactions]]
    first.sort()
    user, item = user[first], item[first]

    features = {}
    for name, dim in modalities:
        centroids = rng.standard_normal((clusters, dim)).astype(np.float32)
        features[name] = centroids[item_cluster] + noise * rng.standard_normal((items, dim)).astype(np.float32)

    num_entities = max(entities, items)
    linked = np.flatnonzero(rng.random(items) < link_fraction)
    item_entity = np.stack([linked, rng.permutation(num_entities)[: linked.size]], 1).astype(np.int64)
    kg = np.zeros((0, 3), np.int64)
    if triples > 0 and linked.size:
        head_row = rng.integers(0, linked.size, triples)
        head = item_entity[head_row, 1]
        rel = rng.integers(0, relations, triples)
        pool = max(1, num_entities // max(clusters, 1))
        clustered_tail = (item_cluster[item_entity[head_row, 0]] * pool + rng.integers(0, pool, triples)) % num_entities
        tail = np.where(rng.random(triples) < 0.8, clustered_tail, rng.integers(0, num_entities, triples))
        kg = np.unique(np.stack([head, rel, tail], 1).astype(np.int64), axis=0)

    return Dataset(
        name=f"synth-u{users}-i{items}-s{seed}",
        num_users=users,
        num_items=items,
        user=user,
        item=item,
        split=split_per_user(user, seed),
        features=features,
        kg=kg,
        item_entity=item_entity,
        num_entities=num_entities,
        relation_names=[f"rel_{k}" for k in range(relations)],
        provenance={"importer": "synth", "seed": seed, "clusters": clusters, "noise": noise},
        split_seed=seed,
    )
