"""Ray Train launch: `slifmr train --workers N` runs the one training loop on N workers.

Data parallel on CPU with gloo (Ray's process group): each worker trains on its shard of
the training pairs, gradients are averaged every step, the per-epoch kNN is sharded
(slifmr.distributed.knn) and evaluation is sharded by users. Rank 0 writes the run folder;
every epoch it reports a checkpoint to Ray, which keeps the best by validation Recall@20
plus the latest. A restarted worker group (FailureConfig) and a re-run with the same run
folder both resume from Ray's latest checkpoint.

The run folder must be on storage every node can reach (NFS, a shared disk) for multi-node
runs; Ray's own checkpoint copies live in <run folder>/ray.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slifmr import log
from slifmr.config import Config, from_dict, validate
from slifmr.distributed.collectives import Comm
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout
from slifmr.training import train_loop

RAY_RUN_NAME = "train"


def flat_metrics(rec: dict[str, Any]) -> dict[str, Any]:
    out = {"epoch": rec["epoch"], "loss": rec["loss"]["loss"], "epoch_seconds": rec["epoch_seconds"],
           "fusion_seconds": rec["fusion_seconds"]}
    out.update({f"valid_{k}": v for k, v in rec["valid"].items()})
    return out


def _quiet_report_lines() -> None:
    """Ray logs every report() at INFO under a logger named by its file path, which
    RunConfig's logging level does not reach; one line per epoch is ours to print."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def worker_fn(config: dict[str, Any]) -> None:
    """The per-worker function TorchTrainer runs: set up, then `train_loop`."""
    import ray.train
    import ray.train.torch

    comm = Comm.current(ray.train.torch.get_device() if config["gpu"] else "cpu")
    log.setup(level=20 if comm.is_main else 30, progress=False)
    _quiet_report_lines()
    cfg = from_dict(config["config"])
    run_dir = Path(config["run_dir"])

    def report(rec: dict[str, Any], ckpt_dir: Path | None) -> None:
        metrics = flat_metrics(rec)
        if ckpt_dir is not None:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)))
        else:
            ray.train.report(metrics)

    train_from_checkpoint(ray.train.get_checkpoint(), cfg, run_dir, comm, reporter=report,
                          evaluate_test=config.get("evaluate_test", True))


def train_from_checkpoint(checkpoint: Any, cfg: Config, run_dir: Path, comm: Comm, **kwargs: Any) -> dict[str, Any]:
    """`train_loop`, resumed from the Ray checkpoint a restarted worker group or trial is handed
    (ray.train / ray.tune `get_checkpoint()`), or from scratch when it is None."""
    if checkpoint is None:
        return train_loop(cfg, run_dir, comm, **kwargs)
    with checkpoint.as_directory() as folder:
        return train_loop(cfg, run_dir, comm, resume_from=Path(folder), **kwargs)


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on an unreachable host:port (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SlifmrError(f"--address {address}: expected host:port (for example 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise SlifmrError(f"--address {address}: no Ray cluster reachable there ({e.strerror or e})") from e


def connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address not in (None, "auto", "local"):
        _probe(address)
    if address is None:
        # a fresh local instance for this command ("local": never a cluster some earlier
        # `ray start` left a stale address file for); token auth is for shared clusters
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        address = "local"
    try:
        # with the dashboard: it serves the state API that Train's placement-group cleaner polls
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SlifmrError(f"--address {address}: cannot connect to a Ray cluster there ({str(e).splitlines()[0][:120]})") from e


def _user_error(e: Exception) -> SlifmrError | None:
    """The first worker's SlifmrError (bad data, bad checkpoint), as the one-line error it is."""
    for failure in getattr(e, "worker_failures", {}).values():
        cause = getattr(failure, "cause", failure)
        if isinstance(cause, SlifmrError):
            return SlifmrError(str(cause).splitlines()[0])
    return None


def _first_cause(e: Exception) -> str:
    """The first worker's error as one line ("rank 0: OSError: [Errno 30] Read-only file system: ..."),
    else the first line of Ray's own message."""
    for rank, failure in sorted(getattr(e, "worker_failures", {}).items()):
        cause = getattr(failure, "cause", None) or failure
        text = str(cause).strip().splitlines()
        last = next((line for line in reversed(text) if line.strip() and not line.startswith(" ")), "")
        return f"rank {rank}: {type(cause).__name__}: {last[:200]}" if last else f"rank {rank}: {type(cause).__name__}"
    return str(e).splitlines()[0][:200]


def check_resources(workers: int, gpu: bool, resources: dict[str, float], option: str = "--workers") -> None:
    """Refuse a request for more workers (one CPU, or with `gpu` one GPU, each) than the Ray
    cluster's `resources` hold, before any work starts; `option` names the request."""
    kind = "GPU" if gpu else "CPU"
    have = int(resources.get(kind, 0))
    if gpu and have == 0:
        raise SlifmrError("--gpu: the Ray cluster has no GPUs")
    if workers > have:
        raise SlifmrError(f"{option} {workers} is more than the {have} {kind}s of the Ray cluster")


# A worker group that cannot start (a second node lost during recovery, too few CPUs left) is
# retried this many times, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) each, then the run fails
# with one line: Ray's default retries forever, and the job would hang.
GROUP_START_RETRIES = 3


def _failure_config(cls: Any, max_failures: int) -> Any:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if "controller_failure_limit" in fields:
        return cls(max_failures=max_failures, controller_failure_limit=GROUP_START_RETRIES)
    return cls(max_failures=max_failures)


def _cluster_error(e: Exception, workers: int, run_dir: Path) -> SlifmrError | None:
    """A worker group that could not start, as one line saying what to do."""
    text = f"{type(e).__name__}: {e}"
    if "WorkerGroupStartup" not in text and "InsufficientClusterResources" not in text:
        return None
    return SlifmrError(f"the Ray cluster could not start the {workers}-worker group ({GROUP_START_RETRIES + 1} tries; "
                       f"a node lost and not back?): the last complete epoch's checkpoint is kept, continue with "
                       f"slifmr train --resume {run_dir} --workers {workers} when the cluster has room")


def make_trainer(cfg: Config, run_dir: Path, workers: int, gpu: bool = False, max_failures: int = 0,
                 name: str = RAY_RUN_NAME, callbacks: list | None = None, evaluate_test: bool = True) -> Any:
    """The TorchTrainer running `worker_fn` on `workers` workers, writing the run folder
    `run_dir`; a second trainer with the same run folder and name resumes the first."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    run_dir = Path(run_dir).resolve()
    if cfg.data is not None:  # workers do not share the driver's working directory
        cfg = from_dict({**cfg.to_dict(), "data": str(Path(cfg.data).resolve())})
    return TorchTrainer(
        worker_fn,
        train_loop_config={"config": cfg.to_dict(), "run_dir": str(run_dir), "gpu": gpu, "evaluate_test": evaluate_test},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
        run_config=RunConfig(
            name=name,
            storage_path=str(run_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=f"valid_{cfg.train.stop_metric}",
                                               checkpoint_score_order="max"),
            failure_config=_failure_config(FailureConfig, max_failures),
            logging_config=ray.LoggingConfig(log_level="WARNING"),  # the epoch lines are the progress
            callbacks=callbacks or [],
        ),
    )


def ray_train(cfg: Config, run_dir: Path, workers: int, gpu: bool = False, max_failures: int = 0,
              address: str | None = None) -> dict[str, Any]:
    """Train with a TorchTrainer of `workers` workers (gloo on CPU, nccl with --gpu, one GPU
    each); returns results.json's contents."""
    validate(cfg)  # a programmatic caller may have changed the config since it was loaded
    if workers < 1:
        raise SlifmrError("--workers must be >= 1 for Ray Train (0 runs in-process)")
    import ray

    with ray_session(address):
        check_resources(workers, gpu, ray.cluster_resources())
        trainer = make_trainer(cfg, run_dir, workers, gpu, max_failures)
        try:
            fit_interruptibly(trainer)
        except ray.train.TrainingFailedError as e:
            raise _user_error(e) or _cluster_error(e, workers, run_dir) or SlifmrError(
                f"training failed after {max_failures} restart(s): {_first_cause(e)}; the last complete epoch's "
                f"checkpoint is kept: continue with slifmr train --resume {run_dir} --workers {workers}") from e
    return json.loads(RunLayout(Path(run_dir).resolve()).results.read_text())


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray connected for a block (`connect`); a Ray instance this block started is shut down
    when it ends, Ctrl-C included, so no command leaves Ray to its exit hooks (seen to crash
    at interpreter exit). An instance already running (a notebook's, a test session's) stays."""
    import ray

    started = not ray.is_initialized()
    connect(address)
    try:
        yield
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def fit_interruptibly(trainer: Any) -> Any:
    """`trainer.fit()` in a helper thread, so that Ctrl-C reaches this thread as
    KeyboardInterrupt. (Ray Train registers its own SIGINT handler when fit() runs on the main
    thread; it aborts the run and the process ends with status 1 and no word.) On Ctrl-C the
    Ray connection is shut down: the run's actors, its workers among them, end with the driver
    that owns them, and the last complete epoch's checkpoint stays on disk (swapped in
    atomically); then KeyboardInterrupt is raised again for the caller to say how to resume."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        import ray

        ray.shutdown()
        thread.join(30)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
