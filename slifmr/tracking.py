"""Experiment tracking (issue 17, part 3): every epoch's losses, validation metrics and timings,
the config as parameters and the final metrics, sent to TensorBoard or MLflow by the main
process (`train.tracker`; a Tune trial is a run of its own, so each trial is one entry).

    tensorboard   event files in RUN_DIR/tensorboard (`tensorboard --logdir runs/`)
    mlflow        one MLflow run per slifmr run, named after its folder (metric names with '@'
                  written '_at_', which MLflow requires: valid/recall_at_20), in the experiment
                  `train.tracking_experiment`, at `train.tracking_uri` (default: sqlite at
                  RUN_DIR/../mlflow.db); a file: URI is MLflow's file store, which MLflow 3 keeps
                  in maintenance mode, so choosing one opts in to it (MLFLOW_ALLOW_FILE_STORE)

    wandb         one Weights & Biases run per slifmr run (project `train.tracking_experiment`,
                  files under RUN_DIR/wandb; WANDB_MODE=offline keeps them local). Logged from
                  the training loop like the others rather than through Ray's WandbLoggerCallback,
                  so `train` and every Tune trial (Ray Train ones included) log the same way.

A resumed run continues its entry (TensorBoard appends to the folder; MLflow and W&B reopen the
run id kept in RUN_DIR/tracking.json).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from slifmr.atomic import write_text
from slifmr.config import Config, flatten_config
from slifmr.errors import SlifmrError


class Tracker(Protocol):
    def log_epoch(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (slifmr.trainer.EpochRecord.to_json())."""

    def finish(self, results: dict[str, Any]) -> None:
        """results.json: best epoch, its validation and the test metrics."""


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as flat scalars: loss/<part>, valid/<metric>, seconds/<phase>."""
    out = {f"loss/{k}": float(v) for k, v in record.get("loss", {}).items()}
    out.update({f"valid/{k}": float(v) for k, v in record.get("valid", {}).items()})
    out.update({f"seconds/{k.removesuffix('_seconds')}": float(v) for k, v in record.items()
                if k.endswith("_seconds") and k != "epoch_start_unix_seconds" and v is not None})
    return out


def final_scalars(results: dict[str, Any]) -> dict[str, float]:
    out = {f"best_valid/{k}": float(v) for k, v in (results.get("valid") or {}).items()}
    out.update({f"test/{k}": float(v) for k, v in (results.get("test") or {}).items()})
    out["best_epoch"] = float(results.get("best_epoch", 0))
    return out


def _require(module: str, tracker: str, what: str) -> Any:
    """Import the tracker's package, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SlifmrError(f"--tracker {tracker} needs {what}: pip install 'slifmr[track]'") from e


def _saved_run_id(run_dir: Path, key: str, resume: bool) -> str | None:
    """The tracker's run id a resumed run continues (RUN_DIR/tracking.json), else None."""
    state = run_dir / "tracking.json"
    return json.loads(state.read_text()).get(key) if resume and state.exists() else None


def _save_run_id(run_dir: Path, **ids: str) -> None:
    """Record tracker run ids in RUN_DIR/tracking.json, beside those of other trackers."""
    state = run_dir / "tracking.json"
    write_text(state, json.dumps({**(json.loads(state.read_text()) if state.exists() else {}), **ids}))


def _params(cfg: Config) -> dict[str, str]:
    return {k: str(v) for k, v in flatten_config(cfg.to_dict()).items()}


class TensorBoardTracker:
    def __init__(self, cfg: Config, run_dir: Path):
        _require("tensorboard", "tensorboard", "the tensorboard package")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.params = _params(cfg)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in self.params.items()))

    def log_epoch(self, record: dict[str, Any]) -> None:
        for name, value in epoch_scalars(record).items():
            self.writer.add_scalar(name, value, record["epoch"])
        self.writer.flush()

    def finish(self, results: dict[str, Any]) -> None:
        final = final_scalars(results)
        for name, value in final.items():
            self.writer.add_scalar(name, value, int(final["best_epoch"]))
        self.writer.add_hparams(self.params, {f"hparam/{k}": v for k, v in final.items()}, run_name="hparams")
        self.writer.close()


class MLflowTracker:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        self.mlflow = mlflow = _require("mlflow", "mlflow", "MLflow")
        uri = cfg.train.tracking_uri or f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.train.tracking_experiment)
        run_id = _saved_run_id(run_dir, "mlflow_run_id", resume)
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_dir.name)
        if run_id is None:
            mlflow.log_params(_params(cfg))
            _save_run_id(run_dir, mlflow_run_id=self.run.info.run_id, tracking_uri=uri)

    @staticmethod
    def _names(scalars: dict[str, float]) -> dict[str, float]:
        # MLflow names allow '/' (they group in its UI as TensorBoard's do) but not '@'
        return {k.replace("@", "_at_"): v for k, v in scalars.items()}

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.mlflow.log_metrics(self._names(epoch_scalars(record)), step=int(record["epoch"]))

    def finish(self, results: dict[str, Any]) -> None:
        self.mlflow.log_metrics(self._names(final_scalars(results)))
        self.mlflow.end_run()


class WandbTracker:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        wandb = _require("wandb", "wandb", "Weights & Biases")
        run_id = _saved_run_id(run_dir, "wandb_run_id", resume)
        self.run = wandb.init(project=cfg.train.tracking_experiment, name=run_dir.name, dir=str(run_dir),
                              config=flatten_config(cfg.to_dict()), id=run_id, resume="allow" if run_id else None)
        if run_id is None:
            _save_run_id(run_dir, wandb_run_id=self.run.id)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.run.log(epoch_scalars(record), step=int(record["epoch"]))

    def finish(self, results: dict[str, Any]) -> None:
        self.run.summary.update(final_scalars(results))
        self.run.finish()


def make_tracker(cfg: Config, run_dir: Path, resume: bool = False) -> Tracker | None:
    """The tracker `cfg.train.tracker` names, or None ("none")."""
    if cfg.train.tracker == "tensorboard":
        return TensorBoardTracker(cfg, run_dir)
    if cfg.train.tracker == "mlflow":
        return MLflowTracker(cfg, run_dir, resume)
    if cfg.train.tracker == "wandb":
        return WandbTracker(cfg, run_dir, resume)
    return None
