from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny

from slifmr.data.format import TEST, TRAIN, VALID
from slifmr.data.split import grouped_random_order, split_per_user


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


@pytest.mark.parametrize("users", [50, 2**40, 2**52])
def test_grouped_random_order_is_lexsort_even_where_float_keys_tie(users: int) -> None:
    """user + r loses r's low bits as user grows (at 2^52 every key of a user ties): the order
    stays np.lexsort((r, user)) exactly, which keeps every seeded split bit for bit."""
    rng = np.random.default_rng(0)
    user = rng.integers(users - 50, users, 5000).astype(np.int64)
    r = rng.random(5000)
    r[:10] = r[10:20]  # equal draws: lexsort keeps their positions' order
    assert np.array_equal(grouped_random_order(user, r), np.lexsort((r, user)))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_sort_in_place_matches_numpy(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Slices sorted on threads and merged equal one plain sort, duplicates and negatives included."""
    from slifmr.data import sort as sort_mod

    monkeypatch.setattr(sort_mod, "PARALLEL_FROM", 16)
    rng = np.random.default_rng(workers)
    for n in (0, 1, 17, 1001):
        keys = rng.integers(-50, 50, n)
        expected = np.sort(keys)
        sort_mod.sort_in_place(keys, workers)
        assert np.array_equal(keys, expected)
