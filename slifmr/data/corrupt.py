"""Controlled corruption of a dataset's TRAINING information, for robustness studies: fake
interactions, rewired KG triples, noisy modality features. Validation and test interactions
are never touched, so metrics stay comparable with the clean dataset's."""

from __future__ import annotations

import dataclasses

import numpy as np

from slifmr.data.format import TRAIN, Dataset


def add_fake_interactions(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Add fraction x (number of training interactions) random (user, item) pairs to TRAIN,
    none of which the dataset already holds."""
    rng = np.random.default_rng(seed)
    n_train = int((ds.split == TRAIN).sum())
    want = int(round(fraction * n_train))
    existing = set((ds.user * ds.num_items + ds.item).tolist())
    if want > ds.num_users * ds.num_items - len(existing):
        raise ValueError(f"cannot add {want} new pairs to a {ds.num_users} x {ds.num_items} matrix holding {len(existing)}")
    new: list[int] = []
    seen: set[int] = set()
    while len(new) < want:
        keys = rng.integers(0, ds.num_users * ds.num_items, size=2 * (want - len(new)) + 16)
        for k in keys.tolist():
            if k not in existing and k not in seen:
                seen.add(k)
                new.append(k)
                if len(new) == want:
                    break
    keys = np.asarray(new, np.int64)
    return dataclasses.replace(
        ds,
        user=np.concatenate([ds.user, keys // ds.num_items]),
        item=np.concatenate([ds.item, keys % ds.num_items]),
        split=np.concatenate([ds.split, np.full(keys.size, TRAIN, ds.split.dtype)]),
        timestamp=None if ds.timestamp is None else np.concatenate([ds.timestamp, np.full(keys.size, np.nan)]),
        provenance={**ds.provenance, "corruption": f"fake interactions {fraction:.0%} (seed {seed})"},
    )


def rewire_kg(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Replace the tail of a random fraction of the KG triples by a random entity."""
    rng = np.random.default_rng(seed)
    kg = ds.kg.copy()
    pick = rng.choice(kg.shape[0], size=int(round(fraction * kg.shape[0])), replace=False)
    kg[pick, 2] = rng.integers(0, ds.num_entities, size=pick.size)
    kg = np.unique(kg, axis=0)  # a rewired triple may now repeat another
    return dataclasses.replace(ds, kg=kg, provenance={**ds.provenance, "corruption": f"KG rewired {fraction:.0%} (seed {seed})"})


def noisy_features(ds: Dataset, scale: float, seed: int) -> Dataset:
    """Add Gaussian noise of `scale` x each dimension's standard deviation to every modality."""
    rng = np.random.default_rng(seed)
    feats = {m: (x + rng.normal(size=x.shape) * scale * x.std(0, keepdims=True)).astype(np.float32)
             for m, x in ds.features.items()}
    return dataclasses.replace(ds, features=feats,
                               provenance={**ds.provenance, "corruption": f"feature noise {scale} std (seed {seed})"})
