from __future__ import annotations

import numpy as np
from conftest import tiny

from slifmr.data.format import TEST, TRAIN, VALID
from slifmr.data.split import split_per_user


def test_split_is_seeded_per_user_8_1_1() -> None:
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(50), rng.integers(1, 40, 50))
    a, b, c = split_per_user(user, 7), split_per_user(user, 7), split_per_user(user, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for u in range(50):
        s = a[user == u]
        n = s.size
        if n < 3:
            assert (s == TRAIN).all()
            continue
        expect = max(1, round(n * 0.1))
        assert (s == VALID).sum() == expect and (s == TEST).sum() == expect
        assert (s == TRAIN).sum() == n - 2 * expect >= 1


def test_every_user_keeps_training_data_and_splits_are_disjoint() -> None:
    ds = tiny(seed=5)
    assert set(np.unique(ds.user[ds.split == TRAIN])) == set(range(ds.num_users))
    keys = ds.user * ds.num_items + ds.item
    assert np.unique(keys).size == keys.size  # each pair in exactly one split
    ratio = np.bincount(ds.split) / ds.split.size
    assert 0.65 < ratio[TRAIN] < 0.85 and 0.07 < ratio[VALID] < 0.17
