"""`ray job submit` for real, against a two-node Ray cluster on loopback (head + one more
node, 1 CPU each), running the same entry point users run; then both nodes are stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_on_a_two_node_loopback_cluster(tiny_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        head = _ray("start", "--head", "--port", str(gcs), "--dashboard-port", str(dash),
                    "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", *common, env=env)
        assert head.returncode == 0, head.stderr[-2000:]
        node = _ray("start", "--address", f"127.0.0.1:{gcs}", *common, env=env)
        assert node.returncode == 0, node.stderr[-2000:]
        run = tmp_path / "run"
        job = _ray(
            "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT), "--",
            sys.executable, "-m", "slifmr", "-q", "train", "--workers", "2", "--data", str(tiny_path), "--out", str(run),
            "--epochs", "2", "--set", "model.embedding_dim=16", "--set", "train.batch_size=128",
            env=env, timeout=400,
        )
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout
        results = json.loads((run / "results.json").read_text())
        assert results["epochs_run"] == 2 and 0 <= results["test"]["recall@20"] <= 1
        status = _ray("status", "--address", f"127.0.0.1:{gcs}", env=env)
        assert status.stdout.count("node_") >= 2, status.stdout  # two nodes took part
    finally:
        _ray("stop", "--force", env=env)
