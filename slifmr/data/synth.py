"""A seeded synthetic dataset generator for scale and fault tests.

Both generators write exactly the interactions asked for (distinct (user, item) pairs) and
refuse a request the catalogue cannot hold. Items belong to latent clusters; each user prefers a few clusters. Interactions are drawn
cluster-first, then by item popularity inside the cluster (power-law user activity and item
popularity). Modality features are noisy views of the item's cluster, and KG tails are
drawn from a cluster-specific pool, so the auxiliary views carry real signal. Vectorised:
10^6 users and 10^7 interactions take about a minute and a few GB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from slifmr.data.format import Dataset
from slifmr.data.split import split_per_user


def _power_law(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    w = rng.permutation(np.arange(1, n + 1, dtype=np.float64) ** -exponent)
    return w / w.sum()


class _PopularityInCluster:
    """Draws items by popularity inside a given cluster: the inverse CDF of the popularity over
    the items sorted by cluster. `empty[c]`: cluster c has no item."""

    def __init__(self, item_cluster: np.ndarray, popularity: np.ndarray, clusters: int):
        items = item_cluster.size
        self.order = np.argsort(item_cluster, kind="stable")
        self.cum = np.cumsum(popularity[self.order])
        starts = np.searchsorted(item_cluster[self.order], np.arange(clusters))
        ends = np.r_[starts[1:], items]
        self.lo = np.where(starts > 0, self.cum[np.maximum(starts - 1, 0)], 0.0)
        self.hi = self.cum[np.maximum(ends - 1, 0)]
        self.empty = ends <= starts

    def draw(self, cluster: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Items (n,) or (n, m) for clusters (n,) (none empty) and uniform draws of that shape."""
        lo, hi = self.lo[cluster], self.hi[cluster]
        if uniform.ndim == 2:
            lo, hi = lo[:, None], hi[:, None]
        position = np.searchsorted(self.cum, lo + uniform * (hi - lo), side="right")
        return self.order[np.minimum(position, self.order.size - 1)]


def _distinct_pairs(rng: np.random.Generator, user: np.ndarray, item: np.ndarray, items: int,
                    interactions: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (user, item) pairs of the draws, trimmed at random to `interactions` (every
    user keeps one row), sorted by user then item."""
    _, first = np.unique(user * np.int64(items) + item, return_index=True)
    if first.size > interactions:
        priority = rng.random(first.size)
        user_sorted = user[first]
        order = np.argsort(user_sorted, kind="stable")
        lead = np.r_[True, user_sorted[order][1:] != user_sorted[order][:-1]]
        priority[order[lead]] = -1.0
        first = first[np.argsort(priority, kind="stable")[:interactions]]
    first.sort()
    return user[first], item[first]


def check_request(users: int, items: int, interactions: int) -> None:
    """Refuse a request the catalogue cannot hold (ValueError naming the numbers)."""
    if min(users, items, interactions) <= 0:
        raise ValueError(f"users, items and interactions must be positive, got {users}, {items}, {interactions}")
    if interactions > users * items:
        raise ValueError(f"--interactions {interactions:,} is more than the {users:,} x {items:,} = "
                         f"{users * items:,} distinct (user, item) pairs there are")


def _honour(rng: np.random.Generator, draw: Callable[[np.ndarray], np.ndarray], per_user: np.ndarray,
            items: int, interactions: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly `interactions` distinct (user, item) pairs (check_request first): `per_user`
    draws per user, duplicates removed, then draws again for the missing share in proportion
    (popular items repeat); what the generator's own draws cannot reach (a small catalogue
    that a few popular items fill) is made up by pairs drawn uniformly among those not yet
    taken."""
    users = per_user.size
    user = np.repeat(np.arange(users, dtype=np.int64), per_user)
    user, item = _distinct_pairs(rng, user, draw(user), items, interactions)
    for _ in range(6):
        if user.size >= interactions:
            return user, item
        extra = np.repeat(np.arange(users, dtype=np.int64),
                          np.ceil(per_user * 1.5 * (interactions - user.size) / user.size).astype(np.int64))
        user, item = _distinct_pairs(rng, np.r_[user, extra], np.r_[item, draw(extra)], items, interactions)
    missing = interactions - user.size
    if missing > 0:
        taken = user * np.int64(items) + item
        if users * items <= 1 << 24:  # small: choose among the free pairs themselves
            free = np.setdiff1d(np.arange(users * np.int64(items)), taken, assume_unique=True)
            extra = rng.choice(free, missing, replace=False)
        else:  # large and nearly empty: uniform codes, drawn again until enough are new
            extra = np.empty(0, np.int64)
            while extra.size < missing:
                codes = np.unique(rng.integers(0, users * np.int64(items), 2 * missing + 16))
                extra = np.union1d(extra, np.setdiff1d(codes, taken))
            extra = rng.permutation(extra)[:missing]
        code = np.sort(np.r_[taken, extra])
        user, item = code // items, code % items
    return user, item


def _activity(rng: np.random.Generator, users: int, items: int, interactions: int) -> np.ndarray:
    """Draws per user: power law (exponent 0.8), at least 1, at most a quarter of the
    catalogue, summing to about 1.25 x `interactions` (duplicates are removed afterwards)."""
    activity = _power_law(rng, users, 0.8)
    cap = max(1, items // 4)
    target = 1.25 * interactions
    per_user = np.ones(users, np.int64)
    for _ in range(4):  # rescale so the capped counts still sum to the target
        per_user = np.clip(np.floor(activity * target), 1, cap).astype(np.int64)
        target *= 1.25 * interactions / max(per_user.sum(), 1)
    return per_user


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
    """Generate a dataset of exactly `interactions` distinct (user, item) pairs; `modalities` is
    ((name, dim), ...). Raises ValueError when the catalogue cannot hold that many pairs."""
    check_request(users, items, interactions)
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, clusters, items)
    # user preferences: a main cluster and a second one
    user_main = rng.integers(0, clusters, users)
    user_second = rng.integers(0, clusters, users)
    per_user = _activity(rng, users, items, interactions)
    by_popularity = _PopularityInCluster(item_cluster, _power_law(rng, items, 0.9), clusters)

    def draw(user: np.ndarray) -> np.ndarray:
        """One item per row of `user`: a cluster of the user's (or exploration), then popularity."""
        n = user.size
        cluster = np.where(rng.random(n) < 0.7, user_main[user], user_second[user])
        cluster = np.where(rng.random(n) < 0.15, rng.integers(0, clusters, n), cluster)  # exploration
        cluster = np.where(by_popularity.empty[cluster], item_cluster[rng.integers(0, items, n)], cluster)
        return by_popularity.draw(cluster, rng.random(n))

    user, item = _honour(rng, draw, per_user, items, interactions)

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


def synthesize_planted(
    users: int = 1000,
    items: int = 500,
    interactions: int = 20000,
    latent_dim: int = 16,
    cluster_size: int = 50,
    modalities: tuple[tuple[str, int], ...] = (("text", 32), ("image", 64)),
    candidates: int = 16,
    temperature: float = 0.5,
    noise: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """A dataset with planted structure, where a ranking measures what a model recovers.

    Items: clusters of about `cluster_size`; item i has a latent factor v_i = c_cluster(i) +
    `noise` e_i (latent_dim), and a power-law popularity p_i (exponent 0.9). Users: a power-law
    number of draws (exponent 0.8); latent u = a mix of two cluster centroids plus noise. Each
    draw takes `candidates` items by popularity from one of the user's clusters (70% the first,
    20% the second, 10% any cluster), and keeps the one maximising u . v_i / `temperature` + a
    Gumbel variable (a softmax choice among them, Gumbel-max trick). So who interacts with what
    follows clusters, latent affinity within a cluster and popularity, as in a real catalogue.

    Every modality is a fixed random projection of v_i plus Gaussian noise of `noise` times the
    projection's standard deviation, so features
    carry the within-cluster factors too; the KG links each item to its cluster's entity
    ("in_cluster") and to the entities of the signs of its first 8 latent dimensions
    ("has_trait"), so items with similar factors share KG neighbours. Vectorised; every
    interaction draw is one row of numpy arrays."""
    check_request(users, items, interactions)
    if min(latent_dim, cluster_size, candidates) <= 0:
        raise ValueError("latent_dim, cluster_size and candidates must be positive")
    rng = np.random.default_rng(seed)
    clusters = max(1, items // cluster_size)
    item_cluster = rng.integers(0, clusters, items)
    centroids = rng.standard_normal((clusters, latent_dim)).astype(np.float32)
    item_factor = centroids[item_cluster] + noise * rng.standard_normal((items, latent_dim)).astype(np.float32)
    popularity = _power_law(rng, items, 0.9)

    prefer = rng.integers(0, clusters, (users, 2))
    user_factor = (0.7 * centroids[prefer[:, 0]] + 0.3 * centroids[prefer[:, 1]]
                   + noise * rng.standard_normal((users, latent_dim)).astype(np.float32))
    by_popularity = _PopularityInCluster(item_cluster, popularity, clusters)

    def draw(user: np.ndarray) -> np.ndarray:
        """One item per row of `user`: the Gumbel-max choice among popularity-drawn candidates."""
        n = user.size
        which = rng.random(n)
        cluster = np.where(which < 0.7, prefer[user, 0], prefer[user, 1])
        cluster = np.where(which >= 0.9, item_cluster[rng.integers(0, items, n)], cluster)
        cluster = np.where(by_popularity.empty[cluster], item_cluster[rng.integers(0, items, n)], cluster)
        item = np.empty(n, np.int64)
        for a in range(0, n, 1 << 20):  # bounded memory: (chunk, candidates, latent_dim) at a time
            b = min(a + (1 << 20), n)
            cand = by_popularity.draw(cluster[a:b], rng.random((b - a, candidates)))
            affinity = np.einsum("cd,ckd->ck", user_factor[user[a:b]], item_factor[cand]) / temperature
            pick = np.argmax(affinity + rng.gumbel(size=affinity.shape), axis=1)
            item[a:b] = cand[np.arange(b - a), pick]
        return item

    user, item = _honour(rng, draw, _activity(rng, users, items, interactions), items, interactions)

    features = {}
    for name, dim in modalities:
        projection = rng.standard_normal((latent_dim, dim)).astype(np.float32) / np.sqrt(latent_dim)
        signal = item_factor @ projection
        features[name] = signal + noise * signal.std() * rng.standard_normal((items, dim)).astype(np.float32)

    traits = min(8, latent_dim)
    trait_entity = clusters + 2 * np.arange(traits) + (item_factor[:, :traits] > 0)  # (items, traits)
    num_entities = items + clusters + 2 * traits  # every item is its own entity, then clusters, then traits
    item_entity = np.stack([np.arange(items), np.arange(items)], 1).astype(np.int64)
    heads = np.repeat(np.arange(items, dtype=np.int64), 1 + traits)
    tails = np.concatenate([items + item_cluster[:, None], items + trait_entity], 1).reshape(-1)
    rel = np.tile(np.r_[0, np.ones(traits, np.int64)], items)
    kg = np.stack([heads, rel, tails.astype(np.int64)], 1)

    return Dataset(
        name=f"planted-u{users}-i{items}-s{seed}",
        num_users=users, num_items=items, user=user, item=item, split=split_per_user(user, seed),
        features=features, kg=kg, item_entity=item_entity, num_entities=num_entities,
        relation_names=["in_cluster", "has_trait"],
        provenance={"importer": "synth", "generator": "planted", "seed": seed, "clusters": clusters,
                    "latent_dim": latent_dim, "candidates": candidates, "temperature": temperature, "noise": noise},
        split_seed=seed,
    )
