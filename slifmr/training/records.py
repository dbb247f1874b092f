"""What a run records and carries: its named random streams, early stopping, and one
metrics.jsonl line per epoch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from slifmr.rng import derive_seed

# Ray Train's report: (an epoch's metrics.jsonl record, the checkpoint folder or None on other ranks)
Reporter = Callable[[dict[str, Any], Path | None], None]


@dataclass(frozen=True)
class SeedStreams:
    """The run's named random streams, all derived from train.seed (the values predate the
    names and are kept, so a seed's results reproduce across versions)."""

    init: int  # parameter initialisation
    graphs: int  # per epoch: edge pruning, InfoNCE subsample, TransR triples (derive_seed(graphs, epoch))
    negatives: int  # BPR shuffle and negatives
    neighbors: int  # neighbour sampling
    knn: int  # rows of the approximate kNN's recall check
    eval_users: int  # the users evaluated with train.eval_users

    @staticmethod
    def of(seed: int) -> SeedStreams:
        return SeedStreams(init=seed, graphs=seed, negatives=seed + 1, neighbors=seed + 2, knn=seed, eval_users=seed)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The epoch's generator: a pure function of (seed, epoch), the same on every rank."""
        return torch.Generator().manual_seed(derive_seed(self.graphs, epoch))


@dataclass
class EarlyStopping:
    best: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's validation value; True when it is the best so far."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False


@dataclass
class EpochRecord:
    """One line of metrics.jsonl (seconds are wall-clock; comm, kNN and sampling are parts of
    the epoch, train_seconds is the steps alone)."""

    epoch: int
    loss: dict[str, float]
    valid: dict[str, float]
    is_best: bool
    epoch_seconds: float
    fusion_seconds: float = 0.0
    knn_seconds: float = 0.0
    ridge_seconds: float = 0.0  # the ridge head's solves (part of fusion_seconds)
    comm_seconds: float = 0.0
    train_seconds: float = 0.0
    sampling_seconds: float = 0.0
    memory_seconds: float = 0.0  # train.sampling=history: refreshing the historical embeddings
    eval_seconds: float = 0.0
    steps: int = 0
    grad_bytes_per_step: float = 0.0
    knn_recall: float | None = None
    epoch_start_unix_seconds: float = 0.0  # gaps between epochs = time outside the loop
    fused: bool = False
    l2: float | None = None  # closed-form variants: the ridge weight of this line (ials: reg)
    alpha: float | None = None  # variant ials: the confidence weight of this line
    ridge_weight: float | None = None  # with the ridge head: the blend validation chose (model.ridge_blend)
    head: dict[str, Any] | None = None  # with the ridge head: the head in use (rule, k, l2, blend)
    choice_seconds: float = 0.0  # choosing the head on validation (part of eval_seconds)
    grid: dict[str, float] | None = None  # closed forms: this line's grid point (fit's keyword arguments)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("l2", "alpha", "ridge_weight", "head", "grid")}

    def line(self, epochs: int, stop_metric: str) -> str:
        """The epoch's progress line."""
        losses = " ".join(f"{k} {v:.4f}" for k, v in self.loss.items() if k != "loss")
        k = stop_metric.split("@")[1]
        return (
            f"epoch {self.epoch:3d}/{epochs} | loss {self.loss['loss']:.4f} ({losses}) | "
            f"valid recall@{k} {self.valid[f'recall@{k}']:.4f} ndcg@{k} {self.valid[f'ndcg@{k}']:.4f} | "
            f"{self.epoch_seconds:.2f}s (fusion {self.fusion_seconds:.2f}s)"
            + (f" | kNN recall {self.knn_recall:.3f}" if self.knn_recall is not None else "")
            + (" *" if self.is_best else "")
        )
