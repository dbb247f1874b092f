"""Experiment tracking: every epoch's losses, validation metrics and timings, the config as
parameters and the final metrics, sent to TensorBoard, MLflow or Weights & Biases by the main
process (`train.tracker`; a Tune trial is a run of its own, so each trial is one entry).

    tensorboard   event files in RUN_DIR/tensorboard (`tensorboard --logdir runs/`)
    mlflow        one MLflow run per slifmr run, named after its folder (metric names with '@'
                  written '_at_', which MLflow requires: valid/recall_at_20), in the experiment
                  `train.tracking_experiment`, at `train.tracking_uri` (default: sqlite at
                  RUN_DIR/../mlflow.db, artifacts beside it in mlartifacts/); a file: URI is
                  MLflow's file store, which MLflow 3 keeps in maintenance mode, so choosing one
                  opts in to it (MLFLOW_ALLOW_FILE_STORE). At the end config.yaml,
                  results.json and the run's curves.png are logged as its artifacts; a resume
                  that changes runtime keys records them as tags resumed.<key> (MLflow's
                  parameters cannot change), and the final metrics are logged at the step of
                  the last epoch, so a resumed run's do not land on the first run's.
    wandb         one Weights & Biases run per slifmr run (project `train.tracking_experiment`,
                  files under RUN_DIR/wandb; WANDB_MODE=offline keeps them local). Logged from
                  the training loop like the others rather than through Ray's WandbLoggerCallback,
                  so `train` and every Tune trial (Ray Train ones included) log the same way.

Before any work `check_tracker` makes sure the tracker can start: its package is installed, an
MLflow server answers within seconds (or the sqlite store's SQLAlchemy is there), W&B has a login
or an offline mode. Each fails in one line (SlifmrError) before the run folder is made.

Nothing is shared between two runs in one process or two processes beside the store itself:
MLflow is driven through an explicit `MlflowClient` and run id (never the fluent API's global
active run), W&B runs are created with `reinit="create_new"`, and a sqlite store is created under
an exclusive file lock, so concurrent trials cannot race through its schema migration. `tracking`
ends the tracker's run on every exit: FINISHED, FAILED on an exception, KILLED on an interrupt.

A resumed run continues its entry (TensorBoard appends to the folder; MLflow and W&B reopen the
run id kept in RUN_DIR/tracking.json).
"""

from __future__ import annotations

import importlib
import json
import logging
import netrc
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol
from urllib.parse import urlsplit

from slifmr import log
from slifmr.atomic import interrupts_deferred, write_text
from slifmr.config import Config, flatten_config
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout
from slifmr.runlock import exclusive

# how long an MLflow server may take to answer the check before a run starts
SERVER_CHECK_SECONDS = 5.0
# how a run ended, in MLflow's words (RunStatus)
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


class Tracker(Protocol):
    def log_epoch(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (slifmr.training.records.EpochRecord.to_json())."""

    def finish(self, results: dict[str, Any]) -> None:
        """results.json: best epoch, its validation and the test metrics; ends the run FINISHED."""

    def close(self, status: str) -> None:
        """End the run without results (status FAILED or KILLED); idempotent after finish."""


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as flat scalars: loss/<part>, valid/<metric>, seconds/<phase>."""
    out = {f"loss/{k}": float(v) for k, v in record.get("loss", {}).items()}
    if record.get("l2") is not None:  # a closed form's step is one ridge weight
        out["l2"] = float(record["l2"])
    out.update({f"valid/{k}": float(v) for k, v in record.get("valid", {}).items()})
    out.update({f"seconds/{k.removesuffix('_seconds')}": float(v) for k, v in record.items()
                if k.endswith("_seconds") and k != "epoch_start_unix_seconds" and v is not None})
    return out


def final_scalars(results: dict[str, Any]) -> dict[str, float]:
    out = {f"best_valid/{k}": float(v) for k, v in (results.get("valid") or {}).items()}
    out.update({f"test/{k}": float(v) for k, v in (results.get("test") or {}).items()})
    out["best_epoch"] = float(results.get("best_epoch", 0))
    return out


def default_mlflow_uri(run_dir: Path) -> str:
    """The MLflow store a run uses without train.tracking_uri: sqlite beside its folder."""
    return f"sqlite:///{(Path(run_dir).parent / 'mlflow.db').resolve()}"


def _require(module: str, tracker: str, what: str, other: str = "") -> Any:
    """Import the tracker's package, or say how to install it (`other`: an alternative)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SlifmrError(f"--tracker {tracker} needs {what}, which cannot be imported here ({e}): "
                          f"pip install 'slifmr[track]'{other}") from e


def check_tracker(tracker: str, tracking_uri: str, run_dir: Path) -> None:
    """Make sure `tracker` can start for a run in `run_dir`, within seconds, before any work.

    mlflow: the package, and for a sqlite store SQLAlchemy and Alembic (the store is created,
    under its lock); for an http(s) store a server that answers within SERVER_CHECK_SECONDS.
    wandb: the package, and a login (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a netrc entry
    for the W&B host) unless WANDB_MODE is offline or disabled. tensorboard: the package.
    Raises SlifmrError naming the option and the reason."""
    if tracker == "tensorboard":
        _require("tensorboard", "tensorboard", "the tensorboard package")
    elif tracker == "mlflow":
        _require("mlflow", "mlflow", "MLflow")
        uri = tracking_uri or default_mlflow_uri(run_dir)
        scheme = urlsplit(uri).scheme
        if scheme == "sqlite":
            for module in ("sqlalchemy", "alembic"):
                _require(module, "mlflow", f"{module} for its sqlite store", ", or give --tracking-uri file:DIR or http://...")
            with _store_lock(uri):
                try:
                    _client(uri)  # creates the store: its schema migration runs once, here
                except Exception as e:  # a damaged or foreign database file: one line, not MLflow's traceback
                    raise SlifmrError(f"--tracking-uri {uri}: the MLflow store cannot be opened "
                                      f"({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
        elif scheme in ("http", "https"):
            _check_server(uri)
    elif tracker == "wandb":
        _require("wandb", "wandb", "Weights & Biases")
        if os.environ.get("WANDB_MODE", "").lower() not in ("offline", "disabled", "dryrun") and not _wandb_login():
            raise SlifmrError("--tracker wandb: not logged in: run `wandb login`, set WANDB_API_KEY, "
                              "or set WANDB_MODE=offline to keep the run local")


def _check_server(uri: str) -> None:
    """An MLflow tracking server answers at `uri` (any HTTP status counts as an answer)."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_CHECK_SECONDS).close()
    except urllib.error.HTTPError:
        return  # something answers: MLflow itself reports what it does not like
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SlifmrError(f"--tracking-uri {uri}: no MLflow server answers ({reason}); start one "
                          f"(mlflow server) or choose another store") from None


def _wandb_login() -> bool:
    """W&B credentials the way wandb.init looks for them: environment, then netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on a sqlite store's file while it is opened: two processes that create
    the same store at once would both run its schema migration, and one would fail."""
    if urlsplit(uri).scheme != "sqlite":
        yield
        return
    with exclusive(uri.removeprefix("sqlite:///") + ".lock"):
        yield


def _client(uri: str) -> Any:
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)  # opens (and, the first time, creates) the store
    return client


def _curves(run_dir: Path) -> Path:
    """The run's learning curves (`slifmr report`'s curves.png for this one run), drawn into
    RUN_DIR/curves.png."""
    from slifmr.report import plot_curves, read_run

    return plot_curves([read_run(run_dir)], run_dir / "curves.png")


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
        self.close(FINISHED)

    def close(self, status: str) -> None:
        self.writer.close()  # SummaryWriter.close is idempotent


class MLflowTracker:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        _require("mlflow", "mlflow", "MLflow")
        from mlflow.entities import Param

        self.run_dir = run_dir
        uri = cfg.train.tracking_uri or default_mlflow_uri(run_dir)
        run_id = _saved_run_id(run_dir, "mlflow_run_id", resume)
        with _store_lock(uri):
            self.client = _client(uri)
            if run_id is None:
                run_id = self.client.create_run(self._experiment(uri, cfg.train.tracking_experiment),
                                                run_name=run_dir.name).info.run_id
                self.client.log_batch(run_id, params=[Param(k, v) for k, v in _params(cfg).items()])
                _save_run_id(run_dir, mlflow_run_id=run_id, tracking_uri=uri)
            else:
                self.client.update_run(run_id, status="RUNNING")
                # MLflow parameters cannot change: runtime keys changed at a resume (epochs,
                # threads, ...) are recorded as tags resumed.<key>, the run's config as it is now
                logged = self.client.get_run(run_id).data.params
                for key, value in _params(cfg).items():
                    if logged.get(key, value) != value:
                        self.client.set_tag(run_id, f"resumed.{key}", value)
        self.run_id, self.ended = run_id, False

    def _experiment(self, uri: str, name: str) -> str:
        """The id of experiment `name`, created (artifacts beside a sqlite store) when missing."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if urlsplit(uri).scheme == "sqlite":  # MLflow's default would be ./mlruns under the cwd
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow names allow '/' (they group in its UI as TensorBoard's do) but not '@'
        self.client.log_batch(self.run_id, metrics=[Metric(k.replace("@", "_at_"), v, now, step)
                                                    for k, v in scalars.items()])

    def log_epoch(self, record: dict[str, Any]) -> None:
        self._log(epoch_scalars(record), int(record["epoch"]))

    def finish(self, results: dict[str, Any]) -> None:
        # at the last epoch's step: a run resumed for more epochs logs its new results later, not over them
        self._log(final_scalars(results), int(results.get("epochs_run", 0)))
        layout = RunLayout(self.run_dir)
        for path in (layout.config, layout.results):
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.log_artifact(self.run_id, str(_curves(self.run_dir)))
        if results.get("test") is not None:  # a finished run, not a sweep's trial: its model and its data
            self._log_model()
        self.close(FINISHED)

    def _log_model(self) -> None:
        """The run's export as an MLflow pyfunc model (slifmr/mlflow_pyfunc.py: models from code,
        loadable without slifmr) with its signature and an input example, and the dataset as
        the run's training input (its folder and fingerprint, not its rows)."""
        from slifmr.api import load_run

        run = load_run(self.run_dir)
        # MLflow's hints (integer columns), INFO lines and artifact progress bars are not the user's business here
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow_logger = logging.getLogger("mlflow")
        level = mlflow_logger.level
        mlflow_logger.setLevel(logging.WARNING)
        try:
            self._log_model_quietly(run)
        finally:
            mlflow_logger.setLevel(level)

    def _log_model_quietly(self, run: Any) -> None:
        import tempfile

        import mlflow
        import pandas as pd
        from mlflow.data import dataset_source_registry
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.models import infer_signature

        with tempfile.TemporaryDirectory(prefix="slifmr-mlflow-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            export = run.export(Path(tmp) / "export")
            example = pd.DataFrame({"user": _first_users(run, 2), "k": 3})
            from slifmr.mlflow_pyfunc import ExportModel

            model = ExportModel()
            model.load_context(SimpleNamespace(artifacts={"export": str(export)}))
            signature = infer_signature(example, model.predict(None, example))
            before = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(self.client.tracking_uri)
            try:
                with mlflow.start_run(run_id=self.run_id):
                    mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
                                            artifacts={"export": str(export)}, signature=signature,
                                            input_example=example)
                    source = dataset_source_registry.resolve_dataset_source(str(run.config.data or run.dataset.name))
                    mlflow.log_input(MetaDataset(source, name=run.dataset.name, digest=run.dataset.fingerprint()["digest"][:32]),
                                     context="training")
            finally:
                mlflow.set_tracking_uri(before)

    def close(self, status: str) -> None:
        if not self.ended:
            self.ended = True
            self.client.set_terminated(self.run_id, status=status)


def _first_users(run: Any, n: int) -> list[str]:
    import numpy as np

    from slifmr.recommend import raw_ids

    return list(raw_ids(run.dataset, "users", np.arange(min(n, run.dataset.num_users))))


def start_sweep_run(uri: str, experiment: str, sweep_dir: Path) -> str:
    """The MLflow parent run of a sweep (named after it, in its experiment), created once and
    kept in SWEEP_DIR/tracking.json; a resumed sweep continues it. Trials become its children
    when the sweep settles them (`settle_sweep_runs`)."""
    run_id = _saved_run_id(sweep_dir, "mlflow_run_id", True)
    with _store_lock(uri):
        client = _client(uri)
        if run_id is None:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            run_id = client.create_run(experiment_id, run_name=sweep_dir.name, tags={"slifmr.sweep": str(sweep_dir)}).info.run_id
            _save_run_id(sweep_dir, mlflow_run_id=run_id)
        else:
            client.update_run(run_id, status="RUNNING")
    return run_id


def settle_sweep_runs(uri: str, sweep_dir: Path, parent: str, trials: dict[str, str], interrupted: bool) -> None:
    """Each trial's MLflow run as a child of the sweep's `parent`, with the status Tune ended it
    with (`trials`: trial id -> Tune's TERMINATED or ERROR): FINISHED, FAILED, or KILLED for a
    trial an interrupted sweep left unfinished; a trial ASHA stopped early is FINISHED (it
    ended as the scheduler asked). Then the parent ends FINISHED, or KILLED when interrupted."""
    client = _client(uri)
    for trial, status in trials.items():
        run_id = _saved_run_id(sweep_dir / "runs" / trial, "mlflow_run_id", True)
        if run_id is None:
            continue
        client.set_tag(run_id, "mlflow.parentRunId", parent)
        ended = FAILED if status == "ERROR" else KILLED if interrupted and status != "TERMINATED" else FINISHED
        client.set_terminated(run_id, status=ended)
    client.set_terminated(parent, status=KILLED if interrupted else FINISHED)


class WandbTracker:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        wandb = _require("wandb", "wandb", "Weights & Biases")
        run_id = _saved_run_id(run_dir, "wandb_run_id", resume)
        # reinit="create_new": a run of its own even when another is open in this process
        self.run = wandb.init(project=cfg.train.tracking_experiment, name=run_dir.name, dir=str(run_dir),
                              config=flatten_config(cfg.to_dict()), id=run_id, resume="allow" if run_id else None,
                              reinit="create_new")
        if run_id is None:
            _save_run_id(run_dir, wandb_run_id=self.run.id)
        else:  # the runtime keys a resume changed (W&B's config may change, with leave)
            self.run.config.update(flatten_config(cfg.to_dict()), allow_val_change=True)
        self.ended = False

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.run.log(epoch_scalars(record), step=int(record["epoch"]))

    def finish(self, results: dict[str, Any]) -> None:
        self.run.summary.update(final_scalars(results))
        self.close(FINISHED)

    def close(self, status: str) -> None:
        if not self.ended:
            self.ended = True
            self.run.finish(exit_code=0 if status == FINISHED else 1)


def make_tracker(cfg: Config, run_dir: Path, resume: bool = False) -> Tracker | None:
    """The tracker `cfg.train.tracker` names, or None ("none")."""
    if cfg.train.tracker == "tensorboard":
        return TensorBoardTracker(cfg, run_dir)
    if cfg.train.tracker == "mlflow":
        return MLflowTracker(cfg, run_dir, resume)
    if cfg.train.tracker == "wandb":
        return WandbTracker(cfg, run_dir, resume)
    return None


class _Uninterrupted:
    """A tracker whose calls each finish before a Ctrl-C that arrives during them is raised."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def log_epoch(self, record: dict[str, Any]) -> None:
        with interrupts_deferred():
            self.tracker.log_epoch(record)

    def finish(self, results: dict[str, Any]) -> None:
        with interrupts_deferred():
            self.tracker.finish(results)

    def close(self, status: str) -> None:
        with interrupts_deferred():
            self.tracker.close(status)


@contextmanager
def tracking(cfg: Config, run_dir: Path, resume: bool = False, enabled: bool = True) -> Iterator[Tracker | None]:
    """`make_tracker`'s tracker (None when not `enabled`, e.g. on ranks other than the main one)
    for the body, its run ended on every exit: FINISHED (after `finish`, or when the body returns
    without it), KILLED on KeyboardInterrupt, FAILED on any other exception. Each of its calls
    completes before a Ctrl-C that arrives during it is raised (`interrupts_deferred`)."""
    with interrupts_deferred():
        made = make_tracker(cfg, run_dir, resume) if enabled else None
    tracker = _Uninterrupted(made) if made is not None else None
    try:
        yield tracker
    except BaseException as e:
        if tracker is not None:
            try:
                tracker.close(KILLED if isinstance(e, KeyboardInterrupt | SystemExit) else FAILED)
            except Exception as close_error:  # the training error is the one to report
                log.warning(f"could not end the {cfg.train.tracker} run: {close_error}")
        raise
    if tracker is not None:
        tracker.close(FINISHED)
