from __future__ import annotations

import torch

from slifmr.sampling.negative import BPRSampler


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, 30, (500,), generator=g)
    items = torch.randint(0, 50, (500,), generator=g)
    keys = torch.unique(users * 50 + items)
    return keys // 50, keys % 50


def _epoch(sampler: BPRSampler, epoch: int) -> tuple[torch.Tensor, ...]:
    parts = list(zip(*sampler.epoch(epoch)))
    return tuple(torch.cat(p) for p in parts)


def test_rank_shards_are_disjoint_and_negatives_are_not_positives() -> None:
    users, items = _pairs()
    keys = []
    for rank in range(3):
        s = BPRSampler(users, items, 50, 16, seed=7, rank=rank, world_size=3)
        u, p, n = _epoch(s, 1)
        assert not s.is_positive(u, n).any()
        assert s.is_positive(u, p).all()
        keys.append(set((u * 50 + p).tolist()))
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])
    assert sum(map(len, keys)) == 3 * (users.numel() // 3)


def test_negatives_recheck_only_the_redrawn_and_match_rejecting_every_draw() -> None:
    # dense users (most items positive) need many rejection rounds; checking only each round's
    # new draws must give exactly what re-checking every draw each round gives (same draws)
    users, items = _pairs()
    s = BPRSampler(users, items, 50, 16, seed=7)
    query = users.repeat(4)
    s.generator.manual_seed(3)
    got = s.negatives(query)
    s.generator.manual_seed(3)
    want = torch.randint(0, 50, query.shape, generator=s.generator)
    keys = set((users * 50 + items).tolist())
    for _ in range(s.max_tries):
        bad = torch.tensor([int(u) * 50 + int(n) in keys for u, n in zip(query, want)])
        if not bad.any():
            break
        want[bad] = torch.randint(0, 50, (int(bad.sum()),), generator=s.generator)
    assert torch.equal(got, want)
    assert not s.is_positive(query, got).any()
    # is_positive answers in the caller's order although it searches sorted keys
    assert s.is_positive(users.flip(0), items.flip(0)).all()
    assert torch.equal(s.is_positive(query, want), torch.tensor([int(u) * 50 + int(n) in keys for u, n in zip(query, want)]))


def test_epochs_are_a_function_of_seed_epoch_and_rank() -> None:
    users, items = _pairs()
    a = BPRSampler(users, items, 50, 16, seed=7)
    b = BPRSampler(users, items, 50, 16, seed=7)
    _epoch(a, 1)  # a has drawn an epoch more than b: epoch 2 must still agree
    for x, y in zip(_epoch(a, 2), _epoch(b, 2)):
        assert torch.equal(x, y)
    assert not torch.equal(_epoch(a, 2)[0], _epoch(a, 3)[0])
