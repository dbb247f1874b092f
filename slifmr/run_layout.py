"""Where a run folder keeps what: the one module that names its files. Every reader (report,
the API's `Run`, recommend and export, sweeps, trackers) and the writer (`RunFolder` in
slifmr/training/run_folder.py, rank 0 alone) go through `RunLayout`:

    config.yaml          the resolved configuration
    metrics.jsonl        one line per epoch (or closed-form solve): losses, validation metrics, timings
    checkpoint/          latest: model, optimizer, epoch, early stopping, RNG, the self-loop's
                         Z(t-1), S(t) and the ridge head's state
    best/                the model at the best validation epoch, its S(t) and the head in use
    ranking/             the best epoch's representations, what `recommend` and co. load
    results.json         best epoch, its validation metrics, the test metrics (read once)

Kept free of torch and of the training package, so light commands can read a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG, METRICS, RESULTS = "config.yaml", "metrics.jsonl", "results.json"
CHECKPOINT, BEST, RANKING = "checkpoint", "best", "ranking"


@dataclass
class RunLayout:
    """The paths of the run folder `path` (nothing is read or written here)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def ranking(self) -> Path:
        return self.path / RANKING
