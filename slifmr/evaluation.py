"""Full-ranking evaluation (architecture.md §3): every item is a candidate; training items are
masked for validation, training and validation items for test. Computed in user chunks (memory
O(chunk x N)) as SUMS plus a user count, so workers can all-reduce them before dividing.

At each K, per user then averaged over users with ground truth:
    recall, ndcg, precision, hit    the standard accuracy metrics
    mrr     reciprocal rank of the first relevant item in the top K (0 without one)
    map     average precision at K, normalised by min(relevant, K)
    arp     average recommendation popularity: mean training count of the top-K items
            (Abdollahpouri et al., FLAIRS 2019; lower: less popularity bias)
    tail    share of the top-K items in the long tail: outside the 20% most-interacted items
            in training (the Pareto short head; Abdollahpouri et al., RecSys 2017)
and over the catalogue:
    coverage  share of all items that appear in some user's top K (aggregate diversity)
They match torch_geometric.metrics' LinkPred* metrics on the same top-K lists
(tests/test_metrics.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.data.graphs import csr_entries, interactions_csr

METRICS = ("recall", "ndcg", "precision", "hit", "mrr", "map", "arp", "tail")  # per-user means
CATALOGUE_METRICS = ("coverage",)  # over the union of every user's top K
HEAD_SHARE = 0.2  # the short head: this share of items, the most interacted with in training
ScoreFn = Callable[[Tensor], Tensor]  # users (B,) -> scores (B, N)
CandidatesFn = Callable[[Tensor], Iterable[Tensor]]  # users (B,) -> one (B, N) score tensor per ranking


class Scorer(Protocol):
    """What ranks items: a trained model's representations or EASE's weights."""

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for users (B,)."""


def top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices), each (B, min(k, N)): the k best items of each row of `scores` (B, N),
    best first, under the tie rule every ranking of slifmr follows (evaluate, recommend, the
    export's scorer, Ray Data inference): equal scores rank in ascending item index. So a
    top K is the head of every deeper top K, and a metric at K does not depend on the other
    cut-offs asked for. torch.topk alone leaves tied items in an arbitrary order.

    Cost: torch.topk plus one pass over the row; rows whose boundary score is tied beyond
    the k-th place (a popularity baseline's counts, users with fewer than k unmasked items)
    are sorted whole, stably."""
    k = min(k, scores.shape[1])
    values, index = torch.topk(scores, k, dim=1)
    if k == 0:
        return values, index
    kth = values[:, -1:]
    crossing = ((scores > kth) | (scores == kth)).sum(1) > k  # which tied items enter is a choice
    if crossing.any():
        rows = crossing.nonzero().squeeze(1)
        v, i = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values[rows], index[rows] = v[:, :k], i[:, :k]
    index, by_index = torch.sort(index, dim=1)  # then order the k: score descending, index ascending
    values, by_value = torch.sort(values.gather(1, by_index), dim=1, descending=True, stable=True)
    return values, index.gather(1, by_value)


def metric_sums(scores: Tensor, truth: Tensor, ks: list[int], popularity: Tensor | None = None,
                tail: Tensor | None = None, n_true: Tensor | None = None) -> dict[str, Tensor]:
    """Per-chunk metric sums. scores: (B, N) with masked items at -inf; truth: (B, N) bool;
    popularity: (N,) training interactions per item (for arp@K); tail: (N,) bool, the long-tail
    items (for tail@K). Users without any ground-truth item are not counted. Also returns
    "items@K": (N,) how many counted users have each item in their top K (for coverage@K).
    n_true: (B,) truth.sum(1), when the caller ranks several scores against one truth."""
    n_true = truth.sum(1) if n_true is None else n_true
    keep = n_true > 0
    kmax = min(max(ks), scores.shape[1])
    # every row ranked, then the users with ground truth kept: a copy of the (B, N) scores
    # without those few rows would cost more than ranking them
    top_values, top = top_k(scores, kmax)
    hits = truth.gather(1, top)[keep].double()
    # float64 sums: they are added over chunks and workers, and must not depend on the order
    top_values, top, n_true = top_values[keep], top[keep], n_true[keep].double()
    # an item scored -inf is not recommended (seen, or left off an external list): a user with
    # fewer than K such items has a shorter list, and it never counts as a hit
    listed = (top_values > -math.inf).double()
    hits = hits * listed  # (B, kmax)
    ranks = torch.arange(1, kmax + 1, dtype=torch.float64, device=scores.device)
    discount = 1.0 / torch.log2(ranks + 1)
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
        out[f"mrr@{k}"] = (hits[:, :kk] / ranks[:kk]).amax(1).sum() if kk else torch.tensor(0.0, dtype=torch.float64)
        precision_at = torch.cumsum(hits[:, :kk], 1) / ranks[:kk]
        out[f"map@{k}"] = ((precision_at * hits[:, :kk]).sum(1) / n_true.clamp_max(k)).sum()
        shown = listed[:, :kk]
        count = shown.sum(1).clamp_min(1.0)
        if popularity is not None:
            out[f"arp@{k}"] = ((popularity.double()[top[:, :kk]] * shown).sum(1) / count).sum()
        if tail is not None:
            out[f"tail@{k}"] = ((tail[top[:, :kk]].double() * shown).sum(1) / count).sum()
        out[f"items@{k}"] = torch.bincount(top[:, :kk].reshape(-1), weights=shown.reshape(-1),
                                           minlength=scores.shape[1]).double()
    return out


def cutoffs(k: int | str | Iterable[int]) -> list[int]:
    """The cut-offs K asked for: 20, [5, 10, 50] or "5,10,50" -> distinct positive ints,
    ascending. Raises SlifmrError otherwise."""
    from slifmr.errors import SlifmrError

    try:
        ks = [int(p) for p in k.split(",") if p.strip()] if isinstance(k, str) else \
            [int(k)] if isinstance(k, int) else [int(x) for x in k]
    except (TypeError, ValueError):
        raise SlifmrError(f"K must be positive integers such as 5,10,50, got {k!r}") from None
    if not ks or min(ks) <= 0 or len(set(ks)) != len(ks):
        raise SlifmrError(f"K must be distinct positive integers such as 5,10,50, got {k!r}")
    return sorted(ks)


def long_tail(popularity: Tensor, head_share: float = HEAD_SHARE) -> Tensor:
    """(N,) bool: items outside the `head_share` most popular (ties by item id)."""
    n = popularity.numel()
    order = torch.sort(popularity, descending=True, stable=True).indices
    tail = torch.ones(n, dtype=torch.bool)
    tail[order[: int(round(head_share * n))]] = False
    return tail


class Evaluator:
    """Ranks every item for the users of `users` (default all) on the valid or test split.
    `items` (N,) bool restricts the ground truth to those items' interactions (the cold-start
    protocol's held-out items): every item is still ranked and the training (and validation)
    items still masked; users without such an interaction are not counted."""

    def __init__(self, ds: Dataset, ks: list[int], chunk_size: int = 1024, users: Tensor | None = None,
                 items: np.ndarray | None = None):
        self.ks = sorted(ks)
        self.num_items = ds.num_items
        self.chunk_size = chunk_size
        self.users = torch.arange(ds.num_users) if users is None else users
        self.csr = {s: interactions_csr(*ds.edges(s), ds.num_users) for s in (TRAIN, VALID, TEST)}
        self.truth = dict(self.csr)
        if items is not None:
            for s in (VALID, TEST):
                u, i = ds.edges(s)
                self.truth[s] = interactions_csr(u[items[i]], i[items[i]], ds.num_users)
        self.popularity = torch.bincount(torch.from_numpy(ds.edges(TRAIN)[1]), minlength=ds.num_items).double()
        self.tail = long_tail(self.popularity)

    def sums(self, score_fn: ScoreFn, split: int) -> dict[str, Tensor]:
        return self.candidate_sums(lambda users: [score_fn(users)], 1, split)[0]

    def candidate_sums(self, scores_fn: CandidatesFn, count: int, split: int) -> list[dict[str, Tensor]]:
        """Metric sums of each of `count` rankings that `scores_fn` gives per user chunk (the
        masks and ground truth are built once per chunk for all of them)."""
        if split not in (VALID, TEST):
            raise ValueError("evaluate on VALID or TEST")
        masked = [TRAIN] if split == VALID else [TRAIN, VALID]
        totals: list[dict[str, Tensor]] = [{} for _ in range(count)]
        work: Tensor | None = None
        if self.users.numel() == 0:
            # a worker whose shard has no users still scores once: the score function may hold
            # a collective (sharded layer-wise inference) that every rank must reach
            for _ in scores_fn(self.users):
                pass
        for start in range(0, self.users.numel(), self.chunk_size):
            users = self.users[start : start + self.chunk_size]
            hidden = [csr_entries(*self.csr[s], users) for s in masked]
            r_true, i_true = csr_entries(*self.truth[split], users)
            truth = None
            for total, scores in zip(totals, scores_fn(users), strict=True):
                # masked in a copy (the scorer's tensor is left as it was), one buffer reused:
                # a fresh (B, N) tensor per ranking costs page faults at 10^5 items
                if work is None or work.shape != scores.shape or work.device != scores.device:
                    work = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
                scores = work.copy_(scores)
                dev = scores.device
                for r, i in hidden:
                    scores[r.to(dev), i.to(dev)] = -math.inf
                if truth is None:
                    truth = torch.zeros_like(scores, dtype=torch.bool)
                    truth[r_true.to(dev), i_true.to(dev)] = True
                    n_true = truth.sum(1)
                sums = metric_sums(scores, truth, self.ks, self.popularity.to(dev), self.tail.to(dev), n_true)
                for key, v in sums.items():
                    total[key] = total.get(key, 0.0) + v
        return [total or {"users": torch.tensor(0.0)} for total in totals]

    def evaluate(self, score_fn: ScoreFn, split: int,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Mean metrics over users with ground truth; `all_reduce` sums across workers."""
        return self.evaluate_candidates(lambda users: [score_fn(users)], 1, split, all_reduce)[0]

    def evaluate_candidates(self, scores_fn: CandidatesFn, count: int, split: int,
                            all_reduce: Callable[[Tensor], Tensor] | None = None) -> list[dict[str, float]]:
        """`evaluate` for each of the `count` rankings `scores_fn` (users (B,) -> `count` score
        tensors (B, N)) gives, in one pass over the users and one all-reduce."""
        keys = ["users"] + [f"{m}@{k}" for k in self.ks for m in METRICS]
        vecs = []
        for sums in self.candidate_sums(scores_fn, count, split):
            vec = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64).cpu() for k in keys])
            items = [torch.as_tensor(sums.get(f"items@{k}", torch.zeros(self.num_items)), dtype=torch.float64).cpu()
                     .expand(self.num_items) for k in self.ks]
            vecs.append(torch.cat([vec, *items]))  # one all-reduce for the means and the coverage counts
        vec = torch.stack(vecs)
        if all_reduce is not None:
            vec = all_reduce(vec)
        results = []
        for row in vec:
            n = max(float(row[0]), 1.0)
            out = {k: float(v) / n for k, v in zip(keys[1:], row[1 : len(keys)])}
            for j, k in enumerate(self.ks):
                counts = row[len(keys) + j * self.num_items : len(keys) + (j + 1) * self.num_items]
                out[f"coverage@{k}"] = float((counts > 0).double().mean())
            results.append(out)
        return results
