"""BPR triples (user, positive, uniform negative) over a rank's shard of the training pairs."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from slifmr.rng import derive_seed


class BPRSampler:
    """Each epoch: shuffle the training pairs, take this rank's equal-sized shard, and pair
    each with a uniformly drawn item the user has not interacted with in training.

    users, items: (E,) training pairs. Randomness is a pure function of (seed, epoch, rank):
    the shuffle is seeded by (seed, epoch), so every rank draws the same permutation and the
    shards stay disjoint, and the negatives by (seed, epoch, rank). An epoch is therefore
    reproducible after a restart without saving generator states.
    """

    def __init__(self, users: Tensor, items: Tensor, num_items: int, batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1, max_tries: int = 20,
                 candidates: Tensor | None = None):
        self.users, self.items = users, items
        # the items negatives are drawn from (None: every item); the cold-start protocol leaves
        # out items with no training interaction: unknown is not disliked
        self.candidates = candidates
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.generator = torch.Generator()
        self.rank, self.world_size = rank, world_size
        self.max_tries = max_tries
        self.positive_keys = torch.unique(users * num_items + items)  # sorted

    def __len__(self) -> int:
        per_rank = self.users.numel() // self.world_size
        return -(-per_rank // self.batch_size)

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        """(N,) bool: whether each (user, item) is a training pair. The keys are searched in
        sorted order: random probes into 10^7 keys miss the cache on every level of the binary
        search, sorted probes walk the keys in order."""
        keys, order = torch.sort(users * self.num_items + items)
        pos = torch.searchsorted(self.positive_keys, keys).clamp_max(self.positive_keys.numel() - 1)
        hit = torch.empty_like(keys, dtype=torch.bool)
        hit[order] = self.positive_keys[pos] == keys
        return hit

    def negatives(self, users: Tensor) -> Tensor:
        """(N,) items the users have no training pair with, uniform over the rest (rejection:
        a positive is redrawn, up to max_tries rounds). Each round checks only the draws it
        just made; the others were already negatives."""
        neg = self._draw(users.numel())
        redrawn = torch.arange(users.numel())
        for _ in range(self.max_tries):
            redrawn = redrawn[self.is_positive(users[redrawn], neg[redrawn])]
            if redrawn.numel() == 0:
                break
            neg[redrawn] = self._draw(redrawn.numel())
        return neg

    def _draw(self, n: int) -> Tensor:
        if self.candidates is None:
            return torch.randint(0, self.num_items, (n,), generator=self.generator)
        return self.candidates[torch.randint(0, self.candidates.numel(), (n,), generator=self.generator)]

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The epoch's batches of (users, positives, negatives), each (batch_size,). The shuffle
        and every negative are drawn here, before the first batch is taken (O(shard) work that
        belongs to the epoch, not to its first step)."""
        n = self.users.numel()
        perm = torch.randperm(n, generator=self.generator.manual_seed(derive_seed(self.seed, epoch)))
        per_rank = n // self.world_size  # equal shards keep data-parallel steps in lock-step
        shard = perm[self.rank * per_rank : (self.rank + 1) * per_rank]
        self.generator.manual_seed(derive_seed(self.seed, epoch, self.rank + 1))
        negs = self.negatives(self.users[shard])
        return self._batches(shard, negs)

    def _batches(self, shard: Tensor, negs: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for start in range(0, shard.numel(), self.batch_size):
            idx = shard[start : start + self.batch_size]
            yield self.users[idx], self.items[idx], negs[start : start + self.batch_size]
