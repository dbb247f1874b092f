"""A run folder, written by rank 0 alone (one writer: slifmr/runlock.py holds the folder); its
layout (which file holds what) is slifmr/run_layout.py's. Nothing of an epoch is written when a
parameter or optimizer state is not finite."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slifmr import __version__, log
from slifmr.atomic import write_text
from slifmr.config import Config, save_config
from slifmr.data.format import Dataset
from slifmr.distributed.checkpoint import first_nonfinite, load_checkpoint, save_checkpoint
from slifmr.errors import NonFiniteError
from slifmr.ranking import check_compatible
from slifmr.run_layout import RunLayout
from slifmr.training.records import EarlyStopping, EpochRecord


@dataclass
class LoopState:
    """What the loop carries between epochs besides the model, its optimizer and the self-loop:
    the last finished epoch and early stopping (checkpointed with the torch RNG state)."""

    epoch: int = 0
    stopper: EarlyStopping = field(default_factory=EarlyStopping)

    def state_dict(self) -> dict[str, Any]:
        # samplers and graphs reseed per epoch: the torch RNG is the only global stream
        return {"epoch": self.epoch, "early_stopping": vars(self.stopper).copy(), "rng": {"torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.stopper = EarlyStopping(**state["early_stopping"])
        torch.set_rng_state(state["rng"]["torch"])


@dataclass
class RunFolder(RunLayout):
    """The run folder `path`; `writer` is rank 0 (every other rank reads only)."""

    writer: bool = True

    def meta(self, cfg: Config, ds: Dataset, epoch: int) -> dict[str, Any]:
        """What every checkpoint's meta says: its epoch, config, dataset fingerprint and version."""
        return {"epoch": epoch, "config": cfg.to_dict(), "dataset": ds.fingerprint(), "slifmr_version": __version__}

    def create(self, cfg: Config) -> None:
        """A new run: the folder, its config and an empty metrics file."""
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config)
            self.metrics.write_text("")

    def resume(self, cfg: Config, ds: Dataset, checkpoint: Path | None) -> dict[str, Any]:
        """The checkpoint to continue from (`checkpoint`, else the folder's own), checked against
        `cfg` and `ds`; metrics lines written after it are dropped."""
        ckpt, meta = load_checkpoint(checkpoint or self.checkpoint)
        check_compatible(meta, cfg, ds, self.path)
        if self.writer:  # changed runtime keys (epochs, threads, ...): the folder says so
            save_config(cfg, self.config)
            if self.metrics.exists():
                lines = [ln for ln in self.metrics.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= ckpt["epoch"]]
                write_text(self.metrics, "".join(ln + "\n" for ln in lines))
        return ckpt

    def save_epoch(self, rec: EpochRecord, model: dict[str, Any], optimizer: dict[str, Any], state: dict[str, Any],
                   best: dict[str, Any], meta: dict[str, Any], progress: str) -> None:
        """Epoch `rec`: best/ (when best: the model and `best`), the metrics line and checkpoint/
        (model, optimizer and `state`); raises NonFiniteError, writing nothing, when a parameter or
        optimizer state is not finite (every rank checks: replicas are equal, all stop alike)."""
        bad_state = first_nonfinite({"model": model, "optimizer": optimizer})
        if bad_state is not None:
            raise NonFiniteError(f"epoch {rec.epoch}: {bad_state} is not finite after the epoch's steps; "
                                 f"{self.stopped_hint(rec.epoch)}")
        if not self.writer:
            return
        if rec.is_best:
            save_checkpoint(self.best, {"model": model, **best}, meta)
        self.append(rec)
        save_checkpoint(self.checkpoint, {"model": model, "optimizer": optimizer, **state}, meta)
        log.info(progress)

    def append(self, rec: EpochRecord) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(rec.to_json()) + "\n")

    def write_results(self, results: dict[str, Any]) -> None:
        if self.writer:
            write_text(self.results, json.dumps(results, indent=2))

    def stopped_hint(self, epoch: int) -> str:
        """What the one-line non-finite error says about the folder: nothing of this epoch was
        saved, the last good checkpoint is kept."""
        if epoch <= 1 or not self.checkpoint.exists():
            return f"training stopped; no checkpoint was written (lower train.lr or check the features of {self.path})"
        return (f"training stopped; the last good checkpoint (epoch {epoch - 1}) is kept in {self.path}: continue with "
                f"`slifmr train --resume {self.path}` once the cause is fixed, or start a new run with a smaller train.lr")
