"""Ray Train: a real 2-worker gloo run, a worker killed mid-run, bad requests, cluster.yaml.

One local Ray instance serves the whole module (start-up costs seconds)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from slifmr.config import load_config
from slifmr.errors import SlifmrError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", "train.batch_size=128", "train.patience=100"]


@pytest.fixture(scope="module")
def ray_local():  # noqa: ANN201
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _cfg(data: Path, epochs: int, *overrides: str):  # noqa: ANN202
    cfg = load_config(overrides=[*SMALL, f"train.epochs={epochs}", *overrides])
    cfg.data = str(data)
    return cfg


def _train_workers() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd and "Controller" not in cmd:
            out.append(p)
    return out


EPOCHS = 14


def _ray_checkpoint_epochs(run: Path) -> set[int]:
    """The epochs of the checkpoints Ray Train has recorded for the run (its restart points)."""
    epochs = set()
    for meta in (run / "ray").glob("*/checkpoint_*/meta.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):  # being written
            epochs.add(int(json.loads(meta.read_text())["epoch"]))
    return epochs


@pytest.fixture(scope="module")
def reference_run(ray_local, tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str]]:  # noqa: ANN001
    """An uninterrupted 2-worker DDP run: results and metrics.jsonl lines."""
    from slifmr.launch import ray_train

    out = tmp_path_factory.mktemp("ref")
    reference = ray_train(_cfg(tiny_path, EPOCHS), out, workers=2)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS
    assert (out / "ray").is_dir() and (out / "best").is_dir()
    return reference, lines


def _strip(line: str) -> dict:
    return {k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}


def test_killed_worker_resumes_from_checkpoint_with_same_result(reference_run, tiny_path: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from slifmr.launch import ray_train

    epochs = EPOCHS
    reference, ref_lines = reference_run

    run = tmp_path / "killed"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(ray_train(_cfg(tiny_path, epochs), run, workers=2, max_failures=2)))
    worker.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None and worker.is_alive():
        metrics = run / "metrics.jsonl"
        # mid-training, once Ray holds the checkpoint of the last logged epoch: the kill lands in
        # the next epoch's work. (A kill between an epoch's metrics line and Ray's record of its
        # checkpoint is another case: Ray restarts from the epoch before; see the stop's note.)
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len(lines) >= 2 and len(lines) in _ray_checkpoint_epochs(run):
            procs = _train_workers()
            if procs:
                killed = procs[-1].pid
                os.kill(killed, signal.SIGKILL)  # as a crash would
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed is not None, "the run finished before a worker could be killed"
    assert result, "the killed run did not finish"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    # the restarted group resumed from the last checkpoint: one line per epoch, same values
    assert [_strip(x) for x in lines] == [_strip(x) for x in ref_lines]
    for k, v in reference["test"].items():
        assert abs(result["test"][k] - v) < 1e-9, k


def test_deepspeed_zero_workers_match_ddp(reference_run, tiny_path: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """--strategy deepspeed --zero-stage 1 inside TorchTrainer workers (on Ray's gloo group):
    the same epochs as the DDP run, and a checkpoint holding both ranks' optimizer partitions."""
    import torch

    from slifmr.launch import ray_train

    epochs = 3
    ray_train(_cfg(tiny_path, epochs, "train.strategy=deepspeed", "train.zero_stage=1"), tmp_path / "z", workers=2)
    lines = (tmp_path / "z" / "metrics.jsonl").read_text().splitlines()
    for got, ref in zip(lines, reference_run[1][:epochs], strict=True):
        got, ref = _strip(got), _strip(ref)
        assert got["valid"] == pytest.approx(ref["valid"], abs=1e-6)
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    state = torch.load(tmp_path / "z" / "checkpoint" / "state.pt", weights_only=True)
    assert (state["optimizer"]["zero_stage"], len(state["optimizer"]["partitions"])) == (1, 2)


@pytest.mark.parametrize(
    "kwargs, train, message",
    [
        ({"workers": 3}, {}, "--workers 3 is more than the 2 CPUs of the Ray cluster"),
        ({"workers": 1, "gpu": True}, {}, "--gpu: the Ray cluster has no GPUs"),
        ({"workers": 1}, {"strategy": "fsdp"}, "train.strategy must be 'ddp' or 'deepspeed', got 'fsdp'"),
        ({"workers": 1}, {"strategy": "deepspeed", "zero_stage": 3}, "train.zero_stage must be 1 or 2, got 3"),
    ],
)
def test_impossible_requests_fail_before_any_work(ray_local, tiny_path: Path, tmp_path: Path, kwargs: dict,  # noqa: ANN001
                                                  train: dict, message: str) -> None:
    from slifmr.launch import ray_train

    cfg = _cfg(tiny_path, 1)
    for key, value in train.items():  # as a programmatic caller might, past the config's validation
        setattr(cfg.train, key, value)
    with pytest.raises(SlifmrError, match=message):
        ray_train(cfg, tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


def test_unreachable_address_fails_fast(tiny_path: Path, tmp_path: Path) -> None:
    from slifmr.launch import _probe

    start = time.time()
    with pytest.raises(SlifmrError, match="no Ray cluster reachable"):
        _probe("127.0.0.1:1")
    with pytest.raises(SlifmrError, match="expected host:port"):
        _probe("nonsense")
    assert time.time() - start < 30


def test_cluster_yaml_passes_rays_schema() -> None:
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert any("slifmr" in c for c in config["setup_commands"])
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"].startswith("g")
    broken = {**config, "not_a_field": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_a_workers_data_error_reaches_the_user_as_one_line() -> None:
    """A worker's DataError survives pickling and comes back as the one-line error."""
    import pickle

    from ray.train import WorkerGroupError

    from slifmr.errors import DataError
    from slifmr.launch import _user_error

    err = pickle.loads(pickle.dumps(DataError("d/interactions.parquet", "duplicate pair", column="item", row=7)))
    assert str(err) == "d/interactions.parquet, column 'item', row 7: duplicate pair"
    got = _user_error(WorkerGroupError("rank 1 failed", {1: err}))
    assert got is not None and str(got) == str(err)
    assert _user_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("segfault")})) is None


def test_ray_data_batch_inference_equals_the_single_process_file(ray_local, tiny_path: Path, tmp_path: Path) -> None:  # noqa: ANN001
    import pyarrow.parquet as pq

    from slifmr.cli import main

    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tiny_path), "--out", str(run), "--epochs", "2", "--set",
                 "model.embedding_dim=8", "--set", "model.k_corr=3", "--set", "model.k_mm=3", "--set", "model.ridge_k=5"]) == 0
    assert main(["-q", "recommend", str(run), "--all", "--k", "5", "--out", str(tmp_path / "one.parquet")]) == 0
    assert main(["-q", "recommend", str(run), "--all", "--k", "5", "--out", str(tmp_path / "ray"),
                 "--workers", "2"]) == 0
    one = pq.read_table(tmp_path / "one.parquet").sort_by([("user", "ascending"), ("rank", "ascending")])
    ray_out = pq.read_table(tmp_path / "ray").sort_by([("user", "ascending"), ("rank", "ascending")])
    assert ray_out.column("item").to_pylist() == one.column("item").to_pylist()
    # float32 sums over other batches of users: equal to a few ulps
    assert ray_out.column("score").to_pylist() == pytest.approx(one.column("score").to_pylist(), rel=1e-5, abs=1e-4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary export is gone
    # small batches: each actor writes the part of each batch it scored, in user order, no rows via the driver
    from slifmr.api import load_run
    from slifmr.inference import recommend_all_ray

    export = load_run(run).export(tmp_path / "export")
    _, actors = recommend_all_ray(export, tmp_path / "parts", 5, workers=2, batch_size=16)
    assert 1 <= actors <= 2  # the actors that wrote parts, as the summary says
    parts = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert parts == [f"part-{row:010d}.parquet" for row in (0, 16, 32, 48)]
    assert pq.read_table(tmp_path / "parts").column("item").to_pylist() == \
        pq.read_table(tmp_path / "ray").column("item").to_pylist()


def test_ray_data_batch_inference_writes_an_empty_file_when_nothing_is_left(ray_local, tmp_path: Path) -> None:  # noqa: ANN001
    """Every user has seen every item: in-process and Ray Data write the same empty table."""
    import pyarrow.parquet as pq

    from slifmr.cli import main

    (tmp_path / "full.csv").write_text("user_id,item_id\n" + "".join(f"u{u},i{i}\n" for u in range(5) for i in range(4)))
    assert main(["-q", "data", "import", "table", str(tmp_path / "full.csv"), "--out", str(tmp_path / "data")]) == 0
    run = tmp_path / "run"
    assert main(["-q", "train", "--data", str(tmp_path / "data"), "--out", str(run), "--epochs", "1",
                 "--set", "model.embedding_dim=8"]) == 0
    for name, workers in (("one.parquet", []), ("ray", ["--workers", "2"])):
        assert main(["-q", "recommend", str(run), "--all", "--k", "3", "--out", str(tmp_path / name), *workers]) == 0
    one, ray_out = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "ray")
    assert one.num_rows == ray_out.num_rows == 0 and one.schema == ray_out.schema
    assert one.column_names == ["user", "rank", "item", "score"]
