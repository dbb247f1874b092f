"""Experiment tracking (issue 17, part 3): read back real TensorBoard event files and an MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slifmr.cli import main

ARGS = ["--epochs", "2", "--set", "model.embedding_dim=8", "--set", "model.k_corr=3", "--set", "model.k_mm=3",
        "--set", "model.ridge_k=5"]


def test_tensorboard_event_files_hold_every_epoch_and_the_final_metrics(tiny_path: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(run), "--tracker", "tensorboard", *ARGS]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recall = events.Scalars("valid/recall@20")
    assert [e.step for e in recall] == [1, 2]
    assert [e.value for e in recall] == pytest.approx([h["valid"]["recall@20"] for h in history], rel=1e-6)
    assert {"loss/bpr", "seconds/epoch", "test/recall@20", "best_valid/ndcg@20"} <= set(tags)
    results = json.loads((run / "results.json").read_text())
    assert events.Scalars("test/recall@20")[0].value == pytest.approx(results["test"]["recall@20"], rel=1e-6)


def test_mlflow_file_store_holds_params_epochs_and_final_metrics(tiny_path: Path, tmp_path: Path) -> None:
    import mlflow

    run = tmp_path / "run"
    store = tmp_path / "mlruns"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(run), "--tracker", "mlflow",
                 "--tracking-uri", f"file:{store}", *ARGS]) == 0
    run_id = json.loads((run / "tracking.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    entry = client.get_run(run_id)
    assert entry.info.run_name == "run" and entry.data.params["model.k_corr"] == "3"
    history = client.get_metric_history(run_id, "valid/recall_at_20")
    assert sorted(m.step for m in history) == [1, 2]
    results = json.loads((run / "results.json").read_text())
    assert entry.data.metrics["test/recall_at_20"] == pytest.approx(results["test"]["recall@20"], rel=1e-6)


def test_wandb_offline_run_file_holds_epochs_and_final_metrics(tiny_path: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(run), "--tracker", "wandb", *ARGS]) == 0
    run_id = json.loads((run / "tracking.json").read_text())["wandb_run_id"]
    logs = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 1
    # W&B's record log keeps each metric's name and JSON value as text
    blob = logs[0].read_bytes()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    assert blob.count(b"valid/recall@20") >= len(history)
    for value in [h["valid"]["recall@20"] for h in history] + [results["test"]["recall@20"]]:
        assert json.dumps(value).encode() in blob
