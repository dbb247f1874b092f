"""`slifmr tune`: a Ray Tune sweep where every trial is a full training run.

A trial runs the one training loop: in the trial's own process (workers_per_trial 0), or as a
Ray Train run of N workers whose epochs reach Tune through TuneReportCallback. Trials report
validation metrics only and never evaluate the test split; after the sweep, the best trial by
the validation metric is evaluated on test, once.

Sweep folder (<storage>/<name>):
    spec.yaml            the sweep file as run (resume reads it)
    runs/<trial id>/     each trial's run folder (metrics.jsonl, checkpoint/, best/)
    <Tune's own files>   experiment state, per-trial checkpoints (Tuner.restore reads them)
    trials.csv/.parquet/.md, sweep.png, best.yaml, best.json, sweep.json
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from slifmr import log
from slifmr.atomic import write_text
from slifmr.config import TrainConfig, save_config
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout
from slifmr.runlock import RunLock
from slifmr.tune.results import best_test_line, select_best, trial_rows, write_sweep_outputs
from slifmr.tune.space import SweepSpec, load_spec, param_space, spec_from_dict

SPEC_FILE = "spec.yaml"


class SweepInterrupted(SlifmrError):
    """Ctrl-C (or a stop) ended the sweep before every trial did; Tune saved its state."""


def trial_fn(params: dict[str, Any], spec: dict[str, Any], sweep_dir: str, threads: int) -> None:
    """One trial: the config of `params` trained to the scheduler's max_t (or until ASHA stops it)."""
    import ray.tune

    from slifmr.distributed.collectives import Comm
    from slifmr.launch import flat_metrics, make_trainer, train_from_checkpoint

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one line per checkpoint otherwise
    sweep = spec_from_dict(spec, "spec")
    cfg = sweep.trial_config(params)
    run_dir = Path(sweep_dir) / "runs" / ray.tune.get_context().get_trial_id()
    if sweep.workers_per_trial == 0:
        cfg.train.threads = cfg.train.threads or threads
        log.setup(level=30, progress=False)

        def report(rec: dict[str, Any], ckpt_dir: Path | None) -> None:
            ray.tune.report(flat_metrics(rec), checkpoint=ray.tune.Checkpoint.from_directory(str(ckpt_dir)))

        # an interrupted trial continues from its own checkpoint
        train_from_checkpoint(ray.tune.get_checkpoint(), cfg, run_dir, Comm(), reporter=report, evaluate_test=False)
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        cfg.train.threads = cfg.train.threads or threads
        # same run folder and name on a restored trial: Ray Train resumes its latest checkpoint
        make_trainer(cfg, run_dir, sweep.workers_per_trial, sweep.gpu, name="train",
                     callbacks=[TuneReportCallback()], evaluate_test=False).fit()


def _mlflow_parent(spec: SweepSpec, sweep_dir: Path) -> str | None:
    """The sweep's MLflow parent run id when its trials log to MLflow (tracking.start_sweep_run)."""
    if spec.set.get("train.tracker") != "mlflow":
        return None
    from slifmr.tracking import start_sweep_run

    return start_sweep_run(spec.set["train.tracking_uri"], spec.set["train.tracking_experiment"], sweep_dir)


def _trial_finished(run_dir: Path, spec: SweepSpec) -> bool:
    """Did the trial end on its own or by ASHA's decision, not by the interrupt? Its last epoch
    is max_t, or ASHA's: no checkpoint newer than its last reported epoch is left to resume."""
    metrics = RunLayout(run_dir).metrics
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return len([x for x in lines if x.strip()]) >= spec.scheduler.max_t


def _add_time(sweep_dir: Path, seconds: float) -> float:
    """Record one invocation's wall time in timing.json; returns the sweep's total so far."""
    path = sweep_dir / "timing.json"
    runs = json.loads(path.read_text())["invocations"] if path.exists() else []
    runs.append(round(seconds, 1))
    write_text(path, json.dumps({"invocations": runs}))
    return sum(runs)


def _sigint(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _interrupted() -> bool:
    """Did Ctrl-C end Tuner.fit()? Tune swaps in its own SIGINT handler for the run and puts
    the previous one (ours) back only when the signal arrives; the ResultGrid of an
    interrupted sweep reports every trial as TERMINATED, so this is the reliable sign."""
    interrupted = signal.getsignal(signal.SIGINT) is _sigint
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return interrupted


def _threads(spec: SweepSpec) -> int:
    return max(1, (os.cpu_count() or 1) // (spec.concurrency * max(spec.workers_per_trial, 1)))


def _tuner(spec: SweepSpec, sweep_dir: Path, restore: bool) -> Any:
    import ray.tune

    from slifmr.tune.asha import ResumableASHA

    spec_dict = spec.to_dict()
    threads = _threads(spec)
    trainable = ray.tune.with_parameters(trial_fn, spec=spec_dict, sweep_dir=str(sweep_dir), threads=threads)
    # a trial in-process holds its threads' CPUs; a Ray Train trial's workers ask for their own,
    # and its driver only waits (Ray refuses an empty request: a token share)
    cpus = threads if spec.workers_per_trial == 0 else 0.01
    trainable = ray.tune.with_resources(trainable, {"cpu": cpus})
    if restore:
        if not ray.tune.Tuner.can_restore(str(sweep_dir)):
            raise SlifmrError(f"{sweep_dir} holds no sweep that Ray Tune can resume")
        return ray.tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=True)
    if spec.search == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as e:
            raise SlifmrError("search: optuna needs optuna installed (pip install 'slifmr[tune]')") from e
        search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
    else:
        from ray.tune.search import BasicVariantGenerator

        search = BasicVariantGenerator(max_concurrent=spec.concurrency, random_state=spec.seed)
    s = spec.scheduler
    return ray.tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=ray.tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.samples,
            # the random generator limits concurrency itself (Tune ignores the setting for it)
            max_concurrent_trials=spec.concurrency if spec.search == "optuna" else None,
            scheduler=ResumableASHA(str(sweep_dir), time_attr="epoch", max_t=s.max_t, grace_period=s.grace_period,
                                    reduction_factor=s.reduction_factor),
            search_alg=search,
        ),
        run_config=ray.tune.RunConfig(
            name=sweep_dir.name, storage_path=str(sweep_dir.parent),
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1),
            verbose=1,
        ),
    )


def run_sweep(spec_path: str | Path | None = None, storage: str | Path = "runs/tune", name: str | None = None,
              samples: int | None = None, workers_per_trial: int | None = None, address: str | None = None,
              resume: str | Path | None = None, data: str | None = None, tracker: str | None = None,
              tracking_uri: str | None = None) -> dict[str, Any]:
    """Run (or, with `resume`, continue) a sweep; returns best.json's contents. `tracker`: every
    trial is one entry in TensorBoard (its run folder) or MLflow (experiment: the sweep's name;
    default store: sqlite at the sweep folder's mlflow.db)."""
    from slifmr.launch import check_resources, ray_session
    from slifmr.paths import absolute_path, absolute_uri

    if resume is not None:
        sweep_dir = Path(resume).resolve()
        if not (sweep_dir / SPEC_FILE).exists():
            raise SlifmrError(f"{sweep_dir} is not a sweep folder (no {SPEC_FILE})")
        spec = load_spec(sweep_dir / SPEC_FILE)
    else:
        if spec_path is None:
            raise SlifmrError("give a sweep file (tune_configs/*.yaml) or --resume SWEEP_DIR")
        spec = load_spec(spec_path)
        if samples is not None:
            spec.samples = samples
        if workers_per_trial is not None:
            spec.workers_per_trial = workers_per_trial
        if data is not None:
            spec.data = data
        sweep_dir = (Path(storage) / (name or Path(spec_path).stem)).resolve()
        if tracker is not None:
            spec.set["train.tracker"] = tracker
            spec.set["train.tracking_experiment"] = sweep_dir.name
            if tracker == "mlflow":
                spec.set["train.tracking_uri"] = absolute_uri(tracking_uri) if tracking_uri else f"sqlite:///{sweep_dir / 'mlflow.db'}"
        spec = spec_from_dict(spec.to_dict(), spec.source)  # re-check the overridden values
        if (sweep_dir / SPEC_FILE).exists():
            raise SlifmrError(f"{sweep_dir} already holds a sweep: continue it with --resume {sweep_dir}, "
                              "or choose another --name")
    lock = RunLock(sweep_dir).acquire()  # one driver per sweep folder: a second gets one line
    try:
        if resume is None and (sweep_dir / SPEC_FILE).exists():  # another driver started it meanwhile
            raise SlifmrError(f"{sweep_dir} already holds a sweep: continue it with --resume {sweep_dir}")
        if spec.set.get("train.tracker", "none") != "none":
            # before any trial: the tracker can start, and a sqlite store is made once, here,
            # not by trials racing through its schema migration
            from slifmr.tracking import check_tracker

            check_tracker(spec.set["train.tracker"], spec.set.get("train.tracking_uri", ""), sweep_dir / "runs" / "trial")
        if spec.data is None:  # resolve once, on the driver, so trials do not race to prepare it
            from slifmr.data.ml100k import prepare_ml100k

            spec.data = str(prepare_ml100k())
        spec.data = absolute_path(spec.data)
        if not Path(spec.data).exists():
            raise SlifmrError(f"dataset folder {spec.data} does not exist")
        # Tune warns when per-epoch trial checkpoints snapshot its state often: that is the design
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        import ray

        with ray_session(address):
            check_resources(max(spec.workers_per_trial, 1), spec.gpu, ray.cluster_resources(), "workers_per_trial")
            if resume is None:
                sweep_dir.mkdir(parents=True, exist_ok=True)
                write_text(sweep_dir / SPEC_FILE, yaml.safe_dump(spec.to_dict(), sort_keys=False))
            log.info(f"sweep folder: {sweep_dir} ({spec.samples} trials, {spec.concurrency} at once, "
                     f"{spec.workers_per_trial or 'in-process'} worker(s) per trial, ASHA up to {spec.scheduler.max_t} epochs)")
            start = time.time()
            parent = _mlflow_parent(spec, sweep_dir)
            signal.signal(signal.SIGINT, _sigint)
            try:
                grid = _tuner(spec, sweep_dir, restore=resume is not None).fit()
            finally:
                seconds = _add_time(sweep_dir, time.time() - start)  # a resumed sweep's time adds up
            interrupted = _interrupted() or len(grid) < spec.samples or any(r.config is None for r in grid)
            if parent is not None:
                from slifmr.tracking import settle_sweep_runs

                statuses = {}
                for result in grid:
                    trial = (result.metrics or {}).get("trial_id")
                    if trial is None:  # never started
                        continue
                    # Tune reports every trial of an interrupted sweep TERMINATED: only those that ran to the end are
                    done = not interrupted or _trial_finished(sweep_dir / "runs" / trial, spec)
                    statuses[trial] = "ERROR" if result.error is not None else "TERMINATED" if done else "RUNNING"
                try:
                    settle_sweep_runs(spec.set["train.tracking_uri"], sweep_dir, parent, statuses, interrupted)
                except Exception as e:  # noqa: BLE001 - the tracker's bookkeeping never decides the sweep's outcome
                    log.warning(f"could not set the sweep's MLflow run statuses: {str(e).splitlines()[0][:200]}")
            if interrupted:
                raise SweepInterrupted(f"sweep interrupted; Tune saved its state: continue it with "
                                       f"slifmr tune --resume {sweep_dir}")
            return finish_sweep(spec, sweep_dir, grid, seconds)
    finally:
        lock.release()


def finish_sweep(spec: SweepSpec, sweep_dir: Path, grid: Any, seconds: float) -> dict[str, Any]:
    """Tabulate the trials, pick the best by the validation metric, evaluate it on test once."""
    from slifmr.data.format import TEST, VALID, read_dataset
    from slifmr.evaluation import Evaluator
    from slifmr.training import load_best

    rows = trial_rows(grid, spec, sweep_dir)
    if not any(r["status"] == "TERMINATED" and r[spec.metric] is not None for r in rows):
        raise SlifmrError(f"no trial of {sweep_dir} finished with a {spec.metric}; see the trial errors above")
    best = select_best(rows, spec.metric)
    params = {k: best[k] for k in spec.space}
    cfg = spec.trial_config(params)
    ds = read_dataset(cfg.data)
    model, meta = load_best(cfg, ds, sweep_dir / "runs" / best["trial"])
    ev = Evaluator(ds, cfg.train.topk, cfg.train.eval_chunk)
    result = {
        "trial": best["trial"], "params": params, "best_epoch": int(meta["epoch"]),
        "valid": ev.evaluate(model.full_scores, VALID),
        "test": ev.evaluate(model.full_scores, TEST),  # the one test evaluation of the sweep
    }
    # best.yaml trains under the full protocol (default epochs; patience unless the sweep fixed
    # it); the trials' epoch budget was the scheduler's, their threads the sweep's share
    from slifmr.data.ml100k import cache_root

    if Path(cfg.data).resolve() == (cache_root() / "ml-100k").resolve():
        cfg.data = None  # the embedded dataset: portable to any machine
    defaults = TrainConfig()
    cfg.train.epochs, cfg.train.threads = defaults.epochs, defaults.threads
    cfg.train.patience = int(spec.set.get("train.patience", defaults.patience))
    save_config(cfg, sweep_dir / "best.yaml")
    summary = {"seconds": seconds, "trials": len(rows),
               "stopped_by_asha": sum(bool(r["stopped_early"]) for r in rows),
               "errored": sum(r["status"] == "ERROR" for r in rows), "metric": spec.metric}
    write_sweep_outputs(sweep_dir, rows, list(spec.space), spec.metric, result, summary)
    log.info(f"best trial {best['trial']}: {spec.metric} {best[spec.metric]:.4f}; test "
             f"{best_test_line(result['test'], spec.metric)}; {summary['stopped_by_asha']} of {len(rows)} trials stopped by ASHA; "
             f"{seconds:.0f} s")
    return {**result, **summary}

