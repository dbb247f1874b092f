"""The corruptions of the robustness benchmark touch what they say and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import tiny

from slifmr.data.corrupt import add_fake_interactions, noisy_features, rewire_kg
from slifmr.data.format import TRAIN, read_dataset, write_dataset


def test_fake_interactions_are_new_training_pairs(tmp_path: Path) -> None:
    ds = tiny()
    bad = add_fake_interactions(ds, 0.2, seed=1)
    n_train = int((ds.split == TRAIN).sum())
    added = bad.num_interactions - ds.num_interactions
    assert added == round(0.2 * n_train)
    assert (bad.split[ds.num_interactions:] == TRAIN).all()
    keys = bad.user * bad.num_items + bad.item
    assert np.unique(keys).size == keys.size  # no duplicate pair
    for name in ("user", "item", "split"):  # the original rows, valid and test included, untouched
        np.testing.assert_array_equal(getattr(bad, name)[: ds.num_interactions], getattr(ds, name))
    read_dataset(write_dataset(bad, tmp_path / "d"))  # still a valid dataset


def test_rewired_kg_changes_only_tails(tmp_path: Path) -> None:
    ds = tiny()
    bad = rewire_kg(ds, 0.2, seed=1)
    before = {tuple(t) for t in ds.kg.tolist()}
    changed = [t for t in bad.kg.tolist() if tuple(t) not in before]
    assert 0 < len(changed) <= round(0.2 * ds.kg.shape[0])
    assert bad.kg.shape[0] >= ds.kg.shape[0] - round(0.2 * ds.kg.shape[0])
    np.testing.assert_array_equal(bad.user, ds.user)
    read_dataset(write_dataset(bad, tmp_path / "d"))


def test_feature_noise_scales_with_the_features() -> None:
    ds = tiny()
    bad = noisy_features(ds, 1.0, seed=1)
    for m, x in ds.features.items():
        diff = bad.features[m] - x
        assert bad.features[m].dtype == np.float32
        np.testing.assert_allclose(diff.std(0), x.std(0), rtol=0.5)
    np.testing.assert_array_equal(bad.split, ds.split)
