"""`ray job submit` for real, against a two-node Ray cluster on loopback (head + one more
node, 1 CPU each), running the same entry point users run; then both nodes are stopped."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _stop(temp_dir: str) -> None:
    """Stop this test's two nodes only (`ray stop` would stop every Ray on the machine)."""
    procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)


def test_ray_job_submit_on_a_two_node_loopback_cluster(tiny_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths have a length limit
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    try:
        head = _ray("start", "--head", "--port", str(gcs), "--dashboard-port", str(dash), "--temp-dir", temp_dir,
                    # its own job-agent port: another Ray on this machine may hold the default
                    "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", *common, env=env)
        assert head.returncode == 0, head.stderr[-2000:]
        node = _ray("start", "--address", f"127.0.0.1:{gcs}", "--dashboard-agent-listen-port", str(_free_port()),
                    *common, env=env)
        assert node.returncode == 0, node.stderr[-2000:]
        run = tmp_path / "run"
        submit = ["job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT), "--",
                  sys.executable, "-m", "slifmr", "-q", "train", "--workers", "2", "--data", str(tiny_path), "--out", str(run),
                  "--epochs", "2", "--set", "model.embedding_dim=16", "--set", "train.batch_size=128"]
        for _ in range(30):  # the head's job agent comes up some seconds after `ray start` returns
            job = _ray(*submit, env=env, timeout=400)
            if "No available agent to submit job" not in job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout
        results = json.loads((run / "results.json").read_text())
        assert results["epochs_run"] == 2 and 0 <= results["test"]["recall@20"] <= 1
        status = _ray("status", "--address", f"127.0.0.1:{gcs}", env=env)
        assert status.stdout.count("node_") >= 2, status.stdout  # two nodes took part
    finally:
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
