"""Where content must win: ranking items that have no training interaction (the cold-start
protocol's held-out items, slifmr/data/cold.py). Trained models score such an item from its
content views alone, and those scores sit below the warm items' (a held-out item is rarely in a
user's top 20: cold Recall@20 0.0042 on ml-100k). At the end of training the run places them:
for items without training interactions,

    s'_ui = (1 - lambda) std(s_u)_i + lambda std(c_u)_i + delta

where std standardises each user's scores over the items, s is the trained ranking and c the
content peer's score (content_knn: the mean cosine of the item's features to the user's
history). Warm items keep std(s_u)_i. (lambda, delta) is chosen on validation, never test:
among the grid points whose validation train.stop_metric on all items is within
model.cold_tolerance of the best point's, the one whose metric on the held-out items'
validation interactions is highest. With model.cold_tolerance 0, the warm ranking is kept
wherever placing cold items would cost anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from slifmr import log
from slifmr.closed_forms import CLOSED_FORMS
from slifmr.config import Config
from slifmr.data.cold import cold_items
from slifmr.data.format import VALID, Dataset
from slifmr.distributed.collectives import Comm
from slifmr.evaluation import Scorer
from slifmr.model.content_knn import ContentKNN
from slifmr.model.slifmr import _standardise_
from slifmr.training.build import build_evaluator, cold_placement, places_cold_items

LAMBDAS = (0.0, 0.5, 1.0)  # the content score's share of a cold item's score
OFFSETS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)  # how far cold items are lifted, in standard deviations


@dataclass(frozen=True)
class ColdPlaced:
    """`base`'s ranking with the items of `cold` (N,) bool placed as the module docstring says."""

    base: Scorer
    content: ContentKNN
    cold: Tensor
    lam: float
    delta: float

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for users (B,)."""
        return next(self.candidates(users, [(self.lam, self.delta)]))

    def candidates(self, users: Tensor, points: list[tuple[float, float]]) -> Any:
        """The (B, N) scores of each (lambda, delta) of `points`, both parts computed once."""
        s = _standardise_(self.base.full_scores(users).clone())
        c = _standardise_(self.content.full_scores(users))[:, self.cold]
        warm_part = s[:, self.cold]
        for lam, delta in points:
            out = s.clone()
            out[:, self.cold] = (1.0 - lam) * warm_part + lam * c + delta
            yield out


def applies(cfg: Config, ds: Dataset) -> bool:
    """Whether the run places cold items: a held-out dataset, model.place_cold_items on (or auto),
    a trained variant that ranks through content (a closed form scores its own way) and item
    features for the content score."""
    return (cold_items(ds) is not None and cold_placement(cfg, ds) and places_cold_items(cfg, ds)
            and bool(ds.features) and cfg.variant not in CLOSED_FORMS)


def choose(base: Scorer, cfg: Config, ds: Dataset, comm: Comm) -> tuple[ColdPlaced, dict[str, Any]]:
    """(lambda, delta) chosen on validation (module docstring): the placed scorer and the record
    results.json keeps ("lambda", "delta", "valid" and "valid_cold" of the choice, every point's)."""
    cold = torch.from_numpy(cold_items(ds))
    content = ContentKNN(ds)
    content.fit()
    points = [(lam, delta) for lam in LAMBDAS for delta in OFFSETS]
    placed = ColdPlaced(base, content, cold, *points[0])
    metric = cfg.train.stop_metric
    every = build_evaluator(cfg.train, ds, comm).evaluate_candidates(
        lambda users: placed.candidates(users, points), len(points), VALID, comm.all_reduce_sum)
    on_cold = build_evaluator(cfg.train, ds, comm, items=cold.numpy()).evaluate_candidates(
        lambda users: placed.candidates(users, points), len(points), VALID, comm.all_reduce_sum)
    best = max(m[metric] for m in every)
    allowed = [i for i, m in enumerate(every) if m[metric] >= (1.0 - cfg.model.cold_tolerance) * best]
    i = max(allowed, key=lambda j: (on_cold[j][metric], every[j][metric], -j))
    lam, delta = points[i]
    record = {"lambda": lam, "delta": delta, "metric": metric, "valid": every[i][metric],
              "valid_cold": on_cold[i][metric], "tolerance": cfg.model.cold_tolerance,
              "points": [{"lambda": p[0], "delta": p[1], "valid": e[metric], "valid_cold": c[metric]}
                         for p, e, c in zip(points, every, on_cold, strict=True)]}
    if comm.is_main:
        log.info(f"cold items placed: content share {lam:g}, offset {delta:g} (valid {metric} {every[i][metric]:.4f} "
                 f"on all items, {on_cold[i][metric]:.4f} on the held-out items; best on all {best:.4f})")
    return ColdPlaced(base, content, cold, lam, delta), record


def placed(base: Scorer, ds: Dataset, record: dict[str, Any] | None) -> Scorer:
    """`base` with the placement a finished run chose (results.json's "cold_placement"); `base`
    itself without one."""
    if not record:
        return base
    content = ContentKNN(ds)
    content.fit()
    return ColdPlaced(base, content, torch.from_numpy(cold_items(ds)), float(record["lambda"]), float(record["delta"]))
