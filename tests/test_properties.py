"""Property tests (hypothesis): random valid datasets round-trip through the on-disk format
exactly, and the per-user split is a partition of every user's interactions."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from slifmr.data.format import TEST, TRAIN, VALID, Dataset, read_dataset, write_dataset
from slifmr.data.split import split_per_user


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    num_items = draw(st.integers(3, 12))
    num_users = draw(st.integers(1, 8))
    user, item = [], []
    for u in range(num_users):  # >= 3 interactions each, so valid and test are never empty
        items = draw(st.lists(st.integers(0, num_items - 1), min_size=3, max_size=num_items, unique=True))
        user += [u] * len(items)
        item += items
    user, item = np.asarray(user, np.int64), np.asarray(item, np.int64)
    seed = draw(st.integers(0, 2**31 - 1))
    finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    features = {name: np.asarray(draw(st.lists(st.lists(finite, min_size=dim, max_size=dim), min_size=num_items,
                                                max_size=num_items)), np.float32).reshape(num_items, dim)
                for name, dim in draw(st.dictionaries(st.sampled_from(["text", "image"]), st.integers(1, 3), max_size=2)).items()}
    num_entities = draw(st.integers(num_items, num_items + 6))
    relations = draw(st.integers(1, 3))
    triples = draw(st.lists(st.tuples(st.integers(0, num_entities - 1), st.integers(0, relations - 1),
                                      st.integers(0, num_entities - 1)), max_size=20, unique=True))
    linked = draw(st.lists(st.integers(0, num_items - 1), unique=True, max_size=num_items))
    return Dataset(
        name="prop", num_users=num_users, num_items=num_items, user=user, item=item,
        split=split_per_user(user, seed), features=features,
        kg=np.asarray(triples, np.int64).reshape(-1, 3), item_entity=np.asarray([(i, i) for i in linked], np.int64).reshape(-1, 2),
        num_entities=num_entities, relation_names=[f"r{k}" for k in range(relations)], split_seed=seed,
    )


@settings(max_examples=40, deadline=None)
@given(datasets())
def test_random_datasets_round_trip_exactly(ds: Dataset) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        back = read_dataset(write_dataset(ds, Path(tmp) / "d"))
    for name in ("user", "item", "split", "kg", "item_entity"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name))
    assert back.features.keys() == ds.features.keys()
    for m, x in ds.features.items():
        np.testing.assert_array_equal(back.features[m], x)
    assert (back.num_users, back.num_items, back.num_entities, back.relation_names, back.split_seed) == \
        (ds.num_users, ds.num_items, ds.num_entities, ds.relation_names, ds.split_seed)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=300), st.integers(0, 2**31 - 1))
def test_split_partitions_every_users_interactions(users: list[int], seed: int) -> None:
    user = np.asarray(users, np.int64)
    split = split_per_user(user, seed)
    assert split.shape == user.shape and set(np.unique(split)) <= {TRAIN, VALID, TEST}  # one code each: disjoint, covering
    np.testing.assert_array_equal(split, split_per_user(user, seed))  # seeded
    for u in np.unique(user):
        codes = split[user == u]
        c = codes.size
        if c < 3:
            assert (codes == TRAIN).all()
        else:
            n_held = max(1, round(c * 0.1))
            assert (codes == VALID).sum() == n_held and (codes == TEST).sum() == n_held
            assert (codes == TRAIN).sum() == c - 2 * n_held >= 1
