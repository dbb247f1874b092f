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


def test_a_tracked_run_logs_its_export_as_a_pyfunc_model_and_its_dataset(tiny_path: Path, tmp_path: Path) -> None:
    """`mlflow.pyfunc.load_model(...).predict(...)` gives the export's lists; the dataset is the
    run's training input."""
    import mlflow
    import pandas as pd

    from slifmr.export import load_export

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(run), "--variant", "mf", "--tracker", "mlflow",
                 "--tracking-uri", uri, *ARGS]) == 0
    run_id = json.loads((run / "tracking.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    entry = client.get_run(run_id)
    assert entry.info.status == "FINISHED" and [d.dataset.name for d in entry.inputs.dataset_inputs] == ["synth-u60-i40-s0"]
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        models = mlflow.search_logged_models(experiment_ids=[entry.info.experiment_id], output_format="list")
        assert [m.source_run_id for m in models] == [run_id]
        model = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
    finally:
        mlflow.set_tracking_uri(before)
    assert model.metadata.get_input_schema().input_names() == ["user", "k"]
    got = model.predict(pd.DataFrame({"user": ["5", "7"], "k": [3, 2]}))
    export = load_export(slifmr_export(run, tmp_path / "exp"))
    expected = [("5", i) for i, _ in export.recommend("5", 3)] + [("7", i) for i, _ in export.recommend("7", 2)]
    assert list(zip(got["user"], got["item"])) == expected


def slifmr_export(run: Path, out: Path) -> Path:
    import slifmr

    return slifmr.load_run(run).export(out)


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


# --- a tracker that cannot start fails in one line, before the run folder exists -----------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize("case", ["server down", "wandb without login", "sqlite store without sqlalchemy",
                                  "tensorboard missing", "damaged sqlite store"])
def test_a_tracker_that_cannot_start_stops_the_run_before_its_folder_exists(
        case: str, tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    import sys
    import time

    args = ["-q", "train", "--data", str(tiny_path), "--out", str(tmp_path / "run"), *ARGS]
    if case == "server down":
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # MLflow's own retries would take minutes
        args += ["--tracker", "mlflow", "--tracking-uri", f"http://127.0.0.1:{_free_port()}"]
        expected = "no MLflow server answers"
    elif case == "wandb without login":
        for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        args += ["--tracker", "wandb"]
        expected = "--tracker wandb: not logged in"
    elif case == "sqlite store without sqlalchemy":
        monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # import fails, as with mlflow-skinny alone
        args += ["--tracker", "mlflow"]
        expected = "needs sqlalchemy for its sqlite store"
    elif case == "damaged sqlite store":
        (tmp_path / "mlflow.db").write_bytes(b"not a database" * 100)
        args += ["--tracker", "mlflow"]
        expected = "the MLflow store cannot be opened"
    else:
        monkeypatch.setitem(sys.modules, "tensorboard", None)
        args += ["--tracker", "tensorboard"]
        expected = "--tracker tensorboard needs the tensorboard package"
    start = time.monotonic()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert time.monotonic() - start < 60  # seconds, not MLflow's minutes of retries
    assert not (tmp_path / "run").exists()


# --- the tracker's run ends on every exit; nothing is shared between two runs -------------------

class _Stop(Exception):
    pass


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, "KILLED"), (_Stop, "FAILED")])
def test_a_run_stopped_mid_training_ends_its_mlflow_run_and_the_next_one_trains(
        raised: type[BaseException], status: str, tiny_path: Path, tmp_path: Path) -> None:
    import mlflow

    from slifmr.config import load_config
    from slifmr.training import train_loop

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, "slifmr", settings=[("data", str(tiny_path)), ("train.epochs", 5), ("train.tracker", "mlflow"),
                                                ("train.tracking_uri", uri), ("model.embedding_dim", 8)])

    def stop_after_first_epoch(record: dict, checkpoint: Path | None) -> None:
        raise raised()  # what Jupyter's Interrupt (or any error) does once an epoch is logged

    with pytest.raises(raised):
        train_loop(cfg, tmp_path / "first", reporter=stop_after_first_epoch)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    first = json.loads((tmp_path / "first" / "tracking.json").read_text())["mlflow_run_id"]
    assert client.get_run(first).info.status == status
    assert mlflow.active_run() is None
    cfg.train.epochs = 1
    train_loop(cfg, tmp_path / "second")
    second = json.loads((tmp_path / "second" / "tracking.json").read_text())["mlflow_run_id"]
    assert second != first and client.get_run(second).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(second)} == {"config.yaml", "results.json", "curves.png"}


def _open_store_and_log(uri: str, run_dir: str) -> str:
    from slifmr.config import load_config
    from slifmr.tracking import MLflowTracker

    cfg = load_config(None, "mf", settings=[("train.tracker", "mlflow"), ("train.tracking_uri", uri)])
    Path(run_dir).mkdir()
    tracker = MLflowTracker(cfg, Path(run_dir), resume=False)
    tracker.log_epoch({"epoch": 1, "loss": {"loss": 0.5}, "valid": {"recall@20": 0.1}})
    tracker.close("FINISHED")
    return tracker.run_id


def test_processes_creating_one_sqlite_store_at_once_all_get_their_runs(tmp_path: Path) -> None:
    """Tune trials start together and share the sweep's store: its creation is serialised."""
    import multiprocessing

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.starmap(_open_store_and_log, [(uri, str(tmp_path / f"trial{i}")) for i in range(3)])
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    assert len(set(ids)) == 3
    for run_id in ids:
        assert client.get_run(run_id).info.status == "FINISHED"
        assert [m.value for m in client.get_metric_history(run_id, "valid/recall_at_20")] == [0.1]


@pytest.mark.parametrize("variant", ["ease", "cooc_ridge"])
def test_a_closed_form_is_tracked_one_point_per_l2_and_its_final_metrics(variant: str, tiny_path: Path,
                                                                         tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["-q", "train", "--variant", variant, "--data", str(tiny_path), "--out", str(run),
                 "--tracker", "tensorboard", "--set", "model.ease_l2=[10,100]"]) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("l2")] == [10.0, 100.0]
    assert [e.value for e in events.Scalars("valid/recall@20")] == pytest.approx(
        [h["valid"]["recall@20"] for h in history], rel=1e-6)
    results = json.loads((run / "results.json").read_text())
    assert events.Scalars("test/recall@20")[0].value == pytest.approx(results["test"]["recall@20"], rel=1e-6)


def test_a_resumed_mlflow_run_continues_its_entry_with_its_new_runtime_keys(tiny_path: Path, tmp_path: Path) -> None:
    import mlflow

    run, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(run), "--tracker", "mlflow", "--tracking-uri", uri,
                 *ARGS[:1], "1", *ARGS[2:]]) == 0
    assert main(["-q", "train", "--resume", str(run), "--epochs", "3"]) == 0
    run_id = json.loads((run / "tracking.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    entry = client.get_run(run_id)
    assert entry.info.status == "FINISHED" and len(client.search_runs([entry.info.experiment_id])) == 1
    assert entry.data.params["train.epochs"] == "1" and entry.data.tags["resumed.train.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run_id, "valid/recall_at_20")] == [1, 2, 3]
    # each finish at its last epoch's step: the resumed run's results do not overwrite the first's
    test = client.get_metric_history(run_id, "test/recall_at_20")
    assert sorted(m.step for m in test) == [1, 3]
    assert [m.value for m in test if m.step == 3] == [pytest.approx(json.loads((run / "results.json").read_text())["test"]["recall@20"], rel=1e-6)]


def test_an_interrupt_during_a_tracker_write_waits_for_the_write(tiny_path: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C arriving inside MLflow's database write (as a notebook's Interrupt can): the write
    completes, then the run stops KILLED, and the next tracked run in the process trains."""
    import signal

    import mlflow

    from slifmr.config import load_config
    from slifmr.tracking import MLflowTracker
    from slifmr.training import train_loop

    real_log = MLflowTracker._log

    def interrupted_log(self: MLflowTracker, scalars: dict, step: int) -> None:
        signal.raise_signal(signal.SIGINT)  # mid-call: raised here without the deferral
        real_log(self, scalars, step)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, "slifmr", settings=[("data", str(tiny_path)), ("train.epochs", 3), ("train.tracker", "mlflow"),
                                                ("train.tracking_uri", uri), ("model.embedding_dim", 8)])
    # Python's own Ctrl-C handler, as in a notebook (an earlier test's Ray Train leaves its own)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        monkeypatch.setattr(MLflowTracker, "_log", interrupted_log)
        with pytest.raises(KeyboardInterrupt):
            train_loop(cfg, tmp_path / "first")
    finally:
        signal.signal(signal.SIGINT, previous)
        monkeypatch.setattr(MLflowTracker, "_log", real_log)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    first = json.loads((tmp_path / "first" / "tracking.json").read_text())["mlflow_run_id"]
    assert client.get_run(first).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(first, "valid/recall_at_20")] == [1]  # the write completed
    cfg.train.epochs = 1
    train_loop(cfg, tmp_path / "second")
    second = json.loads((tmp_path / "second" / "tracking.json").read_text())["mlflow_run_id"]
    assert client.get_run(second).info.status == "FINISHED"
