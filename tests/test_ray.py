"""Ray Train: a real 2-worker gloo run, a worker killed mid-run, bad requests, cluster.yaml.

One local Ray instance serves the whole module (start-up costs seconds)."""

from __future__ import annotations

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


def _cfg(data: Path, epochs: int):  # noqa: ANN202
    cfg = load_config(overrides=[*SMALL, f"train.epochs={epochs}"])
    cfg.data = str(data)
    return cfg


def _train_workers() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" in cmd and "Controller" not in cmd:
            out.append(p)
    return out


def test_killed_worker_resumes_from_checkpoint_with_same_result(ray_local, tiny_path: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from slifmr.distributed.launch import ray_train

    epochs = 14
    reference = ray_train(_cfg(tiny_path, epochs), tmp_path / "ref", workers=2)
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert len(ref_lines) == epochs
    assert (tmp_path / "ref" / "ray").is_dir() and (tmp_path / "ref" / "best").is_dir()

    run = tmp_path / "killed"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(ray_train(_cfg(tiny_path, epochs), run, workers=2, max_failures=2)))
    worker.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None and worker.is_alive():
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            procs = _train_workers()
            if procs:
                killed = procs[-1].pid
                os.kill(killed, signal.SIGKILL)  # as a crash would
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed is not None, "the run finished before a worker could be killed"
    assert result, "the killed run did not finish"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    strip = lambda ln: {k: v for k, v in json.loads(ln).items() if not k.endswith("seconds")}  # noqa: E731
    # the restarted group resumed from the last checkpoint: one line per epoch, same values
    assert [strip(x) for x in lines] == [strip(x) for x in ref_lines]
    for k, v in reference["test"].items():
        assert abs(result["test"][k] - v) < 1e-9, k


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"workers": 3}, "--workers 3 is more than the 2 CPUs of the Ray cluster"),
        ({"workers": 1, "gpu": True}, "--gpu: the Ray cluster has no GPUs"),
        ({"workers": 1, "strategy": "fsdp"}, "--strategy fsdp is not supported"),
    ],
)
def test_impossible_requests_fail_before_any_work(ray_local, tiny_path: Path, tmp_path: Path, kwargs: dict, message: str) -> None:  # noqa: ANN001
    from slifmr.distributed.launch import ray_train

    with pytest.raises(SlifmrError, match=message):
        ray_train(_cfg(tiny_path, 1), tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


def test_unreachable_address_fails_fast(tiny_path: Path, tmp_path: Path) -> None:
    from slifmr.distributed.launch import _probe

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
