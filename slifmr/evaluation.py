"""Full-ranking evaluation (architecture.md §3): every item is a candidate; training items are
masked for validation, training and validation items for test. Recall, NDCG, Precision and
Hit at each K, computed in user chunks (memory O(chunk x N)) as SUMS plus a user count, so
workers can all-reduce them before dividing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.data.graphs import csr_entries, interactions_csr

METRICS = ("recall", "ndcg", "precision", "hit")
ScoreFn = Callable[[Tensor], Tensor]  # users (B,) -> scores (B, N)


class Scorer(Protocol):
    """What ranks items: a trained model's representations or EASE's weights."""

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for users (B,)."""


def metric_sums(scores: Tensor, truth: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """Per-chunk metric sums. scores: (B, N) with masked items at -inf; truth: (B, N) bool.
    Users without any ground-truth item are not counted."""
    n_true = truth.sum(1)
    keep = n_true > 0
    # float64 sums: they are added over chunks and workers, and must not depend on the order
    scores, truth, n_true = scores[keep], truth[keep], n_true[keep].double()
    kmax = min(max(ks), scores.shape[1])
    top = torch.topk(scores, kmax, dim=1).indices
    hits = truth.gather(1, top).double()  # (B, kmax)
    discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64, device=scores.device))
    out = {"users": torch.tensor(float(keep.sum()), dtype=torch.float64)}
    for k in ks:
        kk = min(k, kmax)
        h = hits[:, :kk].sum(1)
        dcg = (hits[:, :kk] * discount[:kk]).sum(1)
        ideal = torch.cumsum(discount[:kk], 0)[(n_true.clamp_max(kk) - 1).long()]
        out[f"recall@{k}"] = (h / n_true).sum()
        out[f"ndcg@{k}"] = (dcg / ideal).sum()
        out[f"precision@{k}"] = (h / k).sum()
        out[f"hit@{k}"] = (h > 0).double().sum()
    return out


class Evaluator:
    """Ranks every item for the users of `users` (default all) on the valid or test split."""

    def __init__(self, ds: Dataset, ks: list[int], chunk_size: int = 1024, users: Tensor | None = None):
        self.ks = sorted(ks)
        self.num_items = ds.num_items
        self.chunk_size = chunk_size
        self.users = torch.arange(ds.num_users) if users is None else users
        self.csr = {s: interactions_csr(*ds.edges(s), ds.num_users) for s in (TRAIN, VALID, TEST)}

    def sums(self, score_fn: ScoreFn, split: int) -> dict[str, Tensor]:
        if split not in (VALID, TEST):
            raise ValueError("evaluate on VALID or TEST")
        masked = [TRAIN] if split == VALID else [TRAIN, VALID]
        total: dict[str, Tensor] = {}
        if self.users.numel() == 0:
            # a worker whose shard has no users still scores once: the score function may hold
            # a collective (sharded layer-wise inference) that every rank must reach
            score_fn(self.users)
        for start in range(0, self.users.numel(), self.chunk_size):
            users = self.users[start : start + self.chunk_size]
            scores = score_fn(users).float().clone()  # on the model's device
            dev = scores.device
            for s in masked:
                r, i = csr_entries(*self.csr[s], users)
                scores[r.to(dev), i.to(dev)] = -math.inf
            truth = torch.zeros_like(scores, dtype=torch.bool)
            r, i = csr_entries(*self.csr[split], users)
            truth[r.to(dev), i.to(dev)] = True
            for key, v in metric_sums(scores, truth, self.ks).items():
                total[key] = total.get(key, 0.0) + v
        if not total:
            total = {"users": torch.tensor(0.0)}
        return total

    def evaluate(self, score_fn: ScoreFn, split: int,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Mean metrics over users with ground truth; `all_reduce` sums across workers."""
        sums = self.sums(score_fn, split)
        keys = ["users"] + [f"{m}@{k}" for k in self.ks for m in METRICS]
        vec = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64).cpu() for k in keys])
        if all_reduce is not None:
            vec = all_reduce(vec)
        n = max(float(vec[0]), 1.0)
        return {k: float(v) / n for k, v in zip(keys[1:], vec[1:])}
