"""A real Ray Tune sweep (tune_configs/smoke.yaml), interrupted with Ctrl-C and resumed, from the
command line as a user runs it. Also: a trial can be a Ray Train run (workers_per_trial 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slifmr.config import load_config
from slifmr.data.format import write_dataset
from slifmr.data.synth import synthesize

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough that a trial takes seconds, so the sweep can be interrupted mid-way."""
    ds = synthesize(users=1500, items=600, interactions=40000, entities=1500, triples=6000, seed=3)
    return write_dataset(ds, tmp_path_factory.mktemp("sweep") / "data")


def _slifmr(*args: str) -> list[str]:
    return [sys.executable, "-m", "slifmr", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _finished_trials(sweep: Path) -> dict[str, str]:
    """Trials Tune's saved experiment state marks TERMINATED: their metrics.jsonl text."""
    states = sorted(sweep.glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)
    if not states:
        return {}
    try:
        trials = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]]
    except (json.JSONDecodeError, OSError):  # being written
        return {}
    return {t["trial_id"]: (sweep / "runs" / t["trial_id"] / "metrics.jsonl").read_text()
            for t in trials if t["status"] == "TERMINATED"}


def test_sweep_interrupted_then_resumed(sweep_data: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "tune" / "smoke"
    args = ["tune", str(SMOKE), "--data", str(sweep_data), "--storage", str(tmp_path / "tune"), "--samples", "8",
            "--tracker", "mlflow"]
    proc = subprocess.Popen(_slifmr(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _finished_trials(sweep):
        time.sleep(0.2)
    assert proc.poll() is None, f"the sweep ended before it could be interrupted:\n{proc.stdout.read()[-3000:]}"
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-3000:]
    assert "slifmr tune --resume" in out
    finished = _finished_trials(sweep)
    assert 0 < len(finished) < 8 and not (sweep / "trials.parquet").exists()

    done = subprocess.run(_slifmr("tune", "--resume", str(sweep)), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    best = json.loads((sweep / "best.json").read_text())
    # the trials that had finished were not re-run: their epoch lines are untouched
    assert {t: _finished_trials(sweep)[t] for t in finished} == finished
    rows = pq.read_table(sweep / "trials.parquet").to_pylist()
    assert len(rows) == 8 and all(r["status"] == "TERMINATED" for r in rows)
    for r in rows:  # every trial ran its epochs once each, the interrupted ones continuing
        epochs = [json.loads(x)["epoch"] for x in (sweep / "runs" / r["trial"] / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) == r["epochs"]
        # trials never evaluate the test split (ASHA-stopped ones end before results.json);
        # the sweep does, once, for the chosen trial
        results = sweep / "runs" / r["trial"] / "results.json"
        assert not results.exists() or json.loads(results.read_text())["test"] is None
    # MLflow: one parent run for the sweep, one child per trial, each ended as Tune ended it
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{sweep / 'mlflow.db'}")
    parent = json.loads((sweep / "tracking.json").read_text())["mlflow_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"
    for r in rows:
        child = client.get_run(json.loads((sweep / "runs" / r["trial"] / "tracking.json").read_text())["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent and child.info.status == "FINISHED"
    assert best["trial"] == max(rows, key=lambda r: r["valid_recall@20"])["trial"]
    assert set(best["test"]) >= {"recall@20", "ndcg@20"}
    assert abs(best["valid"]["recall@20"] - rows[0]["valid_recall@20"]) < 1e-9  # same model as the trial's best
    cfg = load_config(sweep / "best.yaml")
    assert cfg.model.beta == pytest.approx(best["params"]["model.beta"])
    (sweep / "sweep.png").unlink()
    shown = subprocess.run(_slifmr("report", str(sweep)), env=_env(), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "| rank | trial |" in shown.stdout and (sweep / "sweep.png").stat().st_size > 1000


def test_trials_can_be_ray_train_runs(sweep_data: Path, tmp_path: Path) -> None:
    """workers_per_trial 1: each trial is a TorchTrainer whose epochs reach Tune through
    TuneReportCallback; with --tracker tensorboard each trial is one TensorBoard entry."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = subprocess.run(_slifmr("tune", str(SMOKE), "--data", str(sweep_data), "--storage", str(tmp_path),
                                  "--samples", "2", "--workers-per-trial", "1", "--tracker", "tensorboard"),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    rows = pq.read_table(tmp_path / "smoke" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(r["epochs"] >= 2 and r["valid_recall@20"] is not None for r in rows)
    assert all((tmp_path / "smoke" / "runs" / r["trial"] / "ray").is_dir() for r in rows)
    for r in rows:
        events = EventAccumulator(str(tmp_path / "smoke" / "runs" / r["trial"] / "tensorboard"))
        events.Reload()
        assert len(events.Scalars("valid/recall@20")) == r["epochs"]
