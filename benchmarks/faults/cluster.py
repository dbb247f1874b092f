"""Faults on a real multi-node Ray cluster built on this machine from network namespaces.

Three Ray nodes (head 10.77.0.1, w1 10.77.0.2, w2 10.77.0.3), each in its own network
namespace with its own address, joined by veth pairs to a bridge in a fourth namespace: no
traffic leaves the namespaces this script makes. The nodes share this machine's disk, which
plays the shared storage (NFS, EFS) that checkpoints and sweep state live on. Every job goes
through `ray job submit` to the head's dashboard, as users submit theirs. Faults:

    worker-node   SIGKILL every process of the node holding a training worker mid-epoch
                  (`slifmr train --workers 2 --max-failures 2`): training resumes on the
                  remaining nodes from the last checkpoint; its final metrics equal an
                  uninterrupted 2-worker run's and every epoch is logged once.
    link-cut      the link of a node holding a training worker goes down for LINK_CUT_S
                  seconds (longer than Ray's node timeout): the job must end (recovered or
                  failed) within JOB_LIMIT_S, never hang; the time it took is recorded.
    head-sweep    SIGKILL every process of the head during `slifmr tune` (2 trials at once);
                  the cluster is started again and `slifmr tune --resume` finishes the sweep:
                  every trial ends, each epoch of each trial logged once.
    double-node   a training worker's node killed mid-epoch, the other worker node killed while
                  the group restarts, a replacement for the first joining later: the job ends
                  recovered (with the uninterrupted run's metrics) or failed in one line.
    storage-outage  the run folder's storage read-only on every node for STORAGE_OUTAGE_S s
                  (bind mounts in each node's mount namespace): the job ends recovered or
                  failed in one line, and the folder stays a run that --resume finishes.

    python -m benchmarks.faults.cluster --out benchmarks/runs/cluster_faults     # every fault
    python -m benchmarks.faults.cluster --faults worker-node --out /tmp/cf

Needs root (ip netns, veth, bridge). Writes benchmarks/results/cluster_faults.json (one row
per fault: what was injected, when, what happened, seconds to recover, pass) and the
CLUSTER_FAULTS block of benchmarks/RESULTS.md. Every namespace and process it made is removed
on exit, however it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.lib import results

BIN = Path(sys.executable).parent
PREFIX = "slc"  # every namespace, link and temp folder this script makes starts with it
SUBNET = "10.77.0"
NODES = {"head": 1, "w1": 2, "w2": 3}  # node name -> last byte of its address
GCS_PORT, DASHBOARD_PORT = 6379, 8265
LINK_CUT_S = 90  # longer than Ray's node timeout (GCS health checks: 5 x 3 s periods, 10 s timeout)
JOB_LIMIT_S = 600  # a job still running this long after a fault counts as hung
DOUBLE_GAP_S = 20  # the second node dies this long after the first: Ray has noticed the first, the group restarts
REPLACE_AFTER_S = 30  # then a replacement for the first node joins
STORAGE_OUTAGE_S = 45  # the shared storage refuses writes this long
TRAIN = ["--set", "model.embedding_dim=16", "--set", "model.k_corr=3", "--set", "model.k_mm=3",
         "--set", "train.batch_size=256", "--set", "train.patience=100", "--set", "train.threads=1"]
SWEEP = """variant: slifmr
set: {model.embedding_dim: 16, model.k_corr: 3, model.k_mm: 3, train.batch_size: 256, train.threads: 1}
metric: valid_recall@20
mode: max
samples: 4
concurrency: 2
workers_per_trial: 0
search: random
seed: 0
scheduler: {type: asha, grace_period: 3, max_t: 6, reduction_factor: 2}
space:
  model.beta: {uniform: [0.1, 0.9]}
  model.gamma: {loguniform: [0.02, 1.0]}
"""


def sh(*cmd: str, check: bool = True, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}\n{(out.stdout + out.stderr)[-3000:]}")
    return out


def ns(node: str) -> str:
    return f"{PREFIX}-{node}"


def address(node: str) -> str:
    return f"{SUBNET}.{NODES[node]}"


class NetnsCluster:
    """Ray nodes in network namespaces joined by a bridge namespace; `up`, faults, `down`."""

    def __init__(self, work: Path):
        self.work = work
        self.bridge = f"{PREFIX}-net"
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    "PATH": f"{BIN}:{os.environ['PATH']}",
                    # gloo binds the address the host name resolves to (127.0.0.1 here, as on many
                    # machines with several interfaces): the workers must use the node's own link
                    "GLOO_SOCKET_IFNAME": "eth0"}
        self.env.pop("RAY_ADDRESS", None)
        self.temp_dir = f"/tmp/{PREFIX}ray"  # short: Ray's socket paths have a length limit

    # --- network ---------------------------------------------------------------------------

    def network(self) -> None:
        self.teardown_network()
        sh("ip", "netns", "add", self.bridge)
        sh("ip", "-n", self.bridge, "link", "add", "name", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge, "link", "set", "br0", "up")
        for node in NODES:
            sh("ip", "netns", "add", ns(node))
            peer = f"{PREFIX}{node}"
            sh("ip", "link", "add", "name", peer, "type", "veth", "peer", "name", f"{peer}x")
            sh("ip", "link", "set", peer, "netns", self.bridge)
            sh("ip", "link", "set", f"{peer}x", "netns", ns(node))
            sh("ip", "-n", ns(node), "link", "set", f"{peer}x", "name", "eth0")
            sh("ip", "-n", self.bridge, "link", "set", peer, "master", "br0")
            sh("ip", "-n", self.bridge, "link", "set", peer, "up")
            sh("ip", "-n", ns(node), "addr", "add", f"{address(node)}/24", "dev", "eth0")
            sh("ip", "-n", ns(node), "link", "set", "eth0", "up")
            sh("ip", "-n", ns(node), "link", "set", "lo", "up")

    def cut(self, node: str, up: bool = False) -> None:
        """Take `node`'s only link down (or up again): its processes live on, unreachable."""
        sh("ip", "-n", self.bridge, "link", "set", f"{PREFIX}{node}", "up" if up else "down")

    def teardown_network(self) -> None:
        for name in [*(ns(n) for n in NODES), self.bridge]:
            if Path(f"/run/netns/{name}").exists():
                self.kill(name)
                sh("ip", "netns", "del", name, check=False)

    # --- Ray -------------------------------------------------------------------------------

    def run_in(self, node: str, *cmd: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns(node), *cmd, timeout=timeout, env=self.env, check=check)

    def start(self) -> None:
        """Start Ray on every node (1 CPU each) and wait until the head sees them all."""
        common = ["--num-cpus", "1", "--disable-usage-stats"]
        self.run_in("head", str(BIN / "ray"), "start", "--head", "--node-ip-address", address("head"),
                    "--port", str(GCS_PORT), "--dashboard-host", address("head"), "--dashboard-port",
                    str(DASHBOARD_PORT), "--include-dashboard", "true", "--temp-dir", self.temp_dir, *common)
        for node in NODES:
            if node != "head":
                self.run_in(node, str(BIN / "ray"), "start", "--address", f"{address('head')}:{GCS_PORT}",
                            "--node-ip-address", address(node), *common)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = self.run_in("head", str(BIN / "ray"), "status", "--address", f"{address('head')}:{GCS_PORT}",
                                 check=False, timeout=60)
            if status.stdout.count("node_") >= len(NODES):
                return
            time.sleep(2)
        raise RuntimeError(f"the cluster did not come up:\n{status.stdout[-2000:]}{status.stderr[-2000:]}")

    def up(self) -> None:
        self.network()
        self.start()

    def start_node(self, node: str) -> None:
        """Start Ray again on a non-head node (a replacement node joining) and wait until the head sees it."""
        self.run_in(node, str(BIN / "ray"), "start", "--address", f"{address('head')}:{GCS_PORT}",
                    "--node-ip-address", address(node), "--num-cpus", "1", "--disable-usage-stats")

    def mount_namespaces(self) -> dict[str, int]:
        """One process per distinct mount namespace of the nodes' processes (`ip netns exec`
        gives each `ray start` its own): where a storage fault must be mounted to be seen."""
        found: dict[str, int] = {}
        for node in NODES:
            for pid in sh("ip", "netns", "pids", ns(node), check=False).stdout.split():
                with contextlib.suppress(OSError):  # the process ended meanwhile
                    found.setdefault(os.readlink(f"/proc/{pid}/ns/mnt"), int(pid))
        return found

    def storage_read_only(self, folder: Path, on: bool) -> int:
        """The shared storage under `folder` read-only (a bind mount over it) in every node's
        mount namespace, or back to normal; returns how many namespaces it changed."""
        changed = 0
        for pid in self.mount_namespaces().values():
            enter = ["nsenter", "-t", str(pid), "-m"]
            if on:
                ok = sh(*enter, "mount", "--bind", str(folder), str(folder), check=False).returncode == 0
                ok = ok and sh(*enter, "mount", "-o", "remount,bind,ro", str(folder), check=False).returncode == 0
            else:
                ok = sh(*enter, "umount", str(folder), check=False).returncode == 0
            changed += ok
        return changed

    def kill(self, name: str) -> int:
        """SIGKILL every process of a namespace (a node losing power); returns how many."""
        pids = [int(p) for p in sh("ip", "netns", "pids", name, check=False).stdout.split()]
        procs = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                proc.kill()
                procs.append(proc)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        return len(procs)

    def ray_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A `ray` command from the head's namespace against the head's dashboard."""
        cut = args.index("--") if "--" in args else len(args)  # the options go before a job's entrypoint
        return self.run_in("head", str(BIN / "ray"), *args[:cut], "--address", f"http://{address('head')}:{DASHBOARD_PORT}",
                           *args[cut:], timeout=timeout, check=False)

    def node_of_train_worker(self) -> str | None:
        """A non-head node running a live Ray Train worker actor, or None: the actors' pids from
        Ray's state API, found among the namespaces' processes (one PID namespace for all)."""
        actors = self.ray_cli("list", "actors", "-f", "class_name=RayTrainWorker", "-f", "state=ALIVE", "--detail",
                              "--format", "json")
        try:
            pids = {str(a["pid"]) for a in json.loads(actors.stdout)}
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
        for node in NODES:
            if node != "head" and pids & set(sh("ip", "netns", "pids", ns(node), check=False).stdout.split()):
                return node
        return None

    def submit(self, name: str, *cmd: str) -> str:
        """`ray job submit --no-wait` of `cmd` from the head's namespace; returns the job's id."""
        job_id = f"{name}-{int(time.time() * 1000)}"
        out = self.ray_cli("job", "submit", "--no-wait", "--submission-id", job_id, "--", *cmd)
        if out.returncode != 0:
            raise RuntimeError(f"ray job submit failed: {(out.stdout + out.stderr)[-2000:]}")
        return job_id

    def wait_job(self, job_id: str, limit: float, log: Path | None = None) -> tuple[str | None, float]:
        """(SUCCEEDED / FAILED / STOPPED, or None when still running after `limit` s; seconds
        waited). The job's logs go to `log`."""
        start = time.monotonic()
        status = None
        while time.monotonic() - start < limit:
            out = self.ray_cli("job", "status", job_id)
            text = out.stdout + out.stderr
            found = [w for w in ("SUCCEEDED", "FAILED", "STOPPED")
                     if f"'{job_id}': {w}" in text or f"Job '{job_id}' {w.lower()}" in text]
            if found:
                status = found[0]
                break
            time.sleep(2)
        if log is not None:
            log.write_text(self.ray_cli("job", "logs", job_id).stdout)
        return status, time.monotonic() - start

    def down(self) -> None:
        self.teardown_network()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# --- the faults -------------------------------------------------------------------------------

def _epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait_for(cond: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _train_cmd(data: Path, run: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "slifmr", "-q", "train", "--workers", "2", "--max-failures", "2", "--data", str(data),
            "--out", str(run), "--epochs", str(epochs), *TRAIN]


def _mid_training(cluster: NetnsCluster, run: Path) -> tuple[str, int]:
    """Wait for two logged epochs and a training worker on a non-head node: (that node, the
    epoch now running)."""
    found: list[str] = []

    def ready() -> bool:
        node = cluster.node_of_train_worker() if len(_epochs(run)) >= 2 else None
        found[:] = [node] if node else []
        return bool(found)

    _wait_for(ready, 300, "two epochs and a training worker on a non-head node")
    return found[0], len(_epochs(run)) + 1


def fault_worker_node(cluster: NetnsCluster, data: Path, work: Path, epochs: int) -> dict[str, Any]:
    """Reference run, then the same run with the node of a training worker killed mid-epoch."""
    status, ref_seconds = cluster.wait_job(cluster.submit("reference", *_train_cmd(data, work / "reference", epochs)),
                                           JOB_LIMIT_S, work / "reference.log")
    if status != "SUCCEEDED":
        raise RuntimeError(f"the reference run ended {status}: {(work / 'reference.log').read_text()[-3000:]}")
    run = work / "killed"
    job = cluster.submit("killed", *_train_cmd(data, run, epochs))
    victim, at_epoch = _mid_training(cluster, run)
    killed = cluster.kill(ns(victim))
    status, recovered = cluster.wait_job(job, JOB_LIMIT_S, work / "killed.log")
    epochs_logged = _epochs(run)
    same = None
    if status == "SUCCEEDED":
        a, b = (json.loads((work / r / "results.json").read_text())["test"] for r in ("reference", "killed"))
        same = max(abs(a[k] - b[k]) for k in a)
    return {"fault": "worker-node", "injected": f"SIGKILL to the {killed} processes of node {victim} "
            f"({address(victim)}), a training worker's, during epoch {at_epoch} of {epochs}",
            "outcome": "recovered" if status == "SUCCEEDED" else str(status), "seconds_after_fault": round(recovered, 1),
            "reference_seconds": round(ref_seconds, 1), "epochs_logged": epochs_logged,
            "each_epoch_once": epochs_logged == list(range(1, epochs + 1)), "max_test_metric_difference": same,
            "passed": status == "SUCCEEDED" and epochs_logged == list(range(1, epochs + 1)) and same is not None
            and same <= 1e-6}


def fault_link_cut(cluster: NetnsCluster, data: Path, work: Path, epochs: int) -> dict[str, Any]:
    """A training worker's node unreachable for LINK_CUT_S s: the job ends (recovered or
    failed) within JOB_LIMIT_S of the cut, never hangs."""
    run = work / "cut"
    job = cluster.submit("cut", *_train_cmd(data, run, epochs))
    victim, at_epoch = _mid_training(cluster, run)
    cluster.cut(victim)
    try:
        status, waited = cluster.wait_job(job, LINK_CUT_S)
    finally:
        cluster.cut(victim, up=True)
    if status is None:
        status, more = cluster.wait_job(job, JOB_LIMIT_S - LINK_CUT_S)
        waited += more
    cluster.wait_job(job, 0, work / "cut.log")
    if status is None:
        cluster.ray_cli("job", "stop", job)
    epochs_logged = _epochs(run)
    outcome = {"SUCCEEDED": "recovered", None: f"hung (stopped after {JOB_LIMIT_S} s)"}.get(status, f"job {status}")
    same = None
    if status == "SUCCEEDED" and (work / "reference" / "results.json").exists():  # the worker-node fault's reference
        a, b = (json.loads((work / r / "results.json").read_text())["test"] for r in ("reference", "cut"))
        same = max(abs(a[k] - b[k]) for k in a)
    return {"fault": "link-cut", "injected": f"link of node {victim} ({address(victim)}), a training worker's, down "
            f"for {LINK_CUT_S} s from epoch {at_epoch} of {epochs}", "outcome": outcome,
            "seconds_after_fault": round(waited, 1), "epochs_logged": epochs_logged, "max_test_metric_difference": same,
            "each_epoch_once": len(epochs_logged) == len(set(epochs_logged)),
            "passed": status is not None and len(epochs_logged) == len(set(epochs_logged))
            and (status != "SUCCEEDED" or epochs_logged == list(range(1, epochs + 1)))}


def fault_head_sweep(cluster: NetnsCluster, data: Path, work: Path) -> dict[str, Any]:
    """The head killed during a sweep; a fresh cluster resumes it to the end."""
    spec = work / "faultsweep.yaml"
    spec.write_text(SWEEP)
    storage = work / "sweeps"
    sweep = storage / "faultsweep"
    cluster.submit("sweep", sys.executable, "-m", "slifmr", "-q", "tune", str(spec), "--data", str(data),
                   "--storage", str(storage))

    def trained() -> dict[str, int]:
        return {r.name: len(_epochs(r)) for r in (sweep / "runs").glob("*") if r.is_dir()} if (sweep / "runs").exists() else {}

    _wait_for(lambda: any(trained().values()), 300, "a trial's first epoch")
    at_kill = trained()
    killed = cluster.kill(ns("head"))
    t_kill = time.monotonic()
    for node in NODES:  # the workers' raylets lost their GCS: the whole cluster is started again
        cluster.kill(ns(node))
    cluster.start()
    job = cluster.submit("resume", sys.executable, "-m", "slifmr", "-q", "tune", "--resume", str(sweep))
    status, _ = cluster.wait_job(job, JOB_LIMIT_S, work / "sweep-resume.log")
    seconds = time.monotonic() - t_kill
    summary = json.loads((sweep / "sweep.json").read_text()) if (sweep / "sweep.json").exists() else {}
    trials = {r.name: _epochs(r) for r in (sweep / "runs").glob("*") if r.is_dir()}
    once = all(e == list(range(1, len(e) + 1)) for e in trials.values())
    return {"fault": "head-sweep", "injected": f"SIGKILL to the {killed} processes of the head during the sweep "
            f"(epochs of each trial then: {sorted(at_kill.values(), reverse=True)})",
            "outcome": f"resumed: {summary.get('trials')} trials, {summary.get('errored')} errored"
            if status == "SUCCEEDED" else f"resume job {status}", "seconds_after_fault": round(seconds, 1),
            "epochs_logged": {k: len(v) for k, v in sorted(trials.items())}, "each_epoch_once": once,
            "passed": status == "SUCCEEDED" and summary.get("trials") == 4 and summary.get("errored") == 0 and once}


def _reference(cluster: NetnsCluster, data: Path, work: Path, epochs: int) -> Path:
    """The uninterrupted 2-worker run the recovered runs are compared with (made once)."""
    ref = work / "reference"
    if not (ref / "results.json").exists():
        status, _ = cluster.wait_job(cluster.submit("reference", *_train_cmd(data, ref, epochs)), JOB_LIMIT_S,
                                     work / "reference.log")
        if status != "SUCCEEDED":
            raise RuntimeError(f"the reference run ended {status}: {(work / 'reference.log').read_text()[-3000:]}")
    return ref


def _difference(a: Path, b: Path) -> float:
    x, y = (json.loads((r / "results.json").read_text())["test"] for r in (a, b))
    return max(abs(x[k] - y[k]) for k in x)


def _last_line(log: Path) -> str:
    lines = [x for x in log.read_text().splitlines() if x.startswith("error:")] if log.exists() else []
    return lines[-1][:300] if lines else ""


def fault_double_node(cluster: NetnsCluster, data: Path, work: Path, epochs: int) -> dict[str, Any]:
    """A worker's node killed mid-epoch, the other worker node killed while the group restarts
    (DOUBLE_GAP_S later), and a replacement for the first joining REPLACE_AFTER_S after that:
    the job must end within JOB_LIMIT_S, recovered (then with the reference's metrics) or
    failed with one line; never hang."""
    ref = _reference(cluster, data, work, epochs)
    run = work / "double"
    job = cluster.submit("double", *_train_cmd(data, run, epochs))
    first, at_epoch = _mid_training(cluster, run)
    second = next(n for n in NODES if n not in ("head", first))
    t0 = time.monotonic()
    cluster.kill(ns(first))
    time.sleep(DOUBLE_GAP_S)
    cluster.kill(ns(second))
    time.sleep(REPLACE_AFTER_S)
    cluster.start_node(first)
    status, _ = cluster.wait_job(job, JOB_LIMIT_S, work / "double.log")
    seconds = time.monotonic() - t0
    if status is None:
        cluster.ray_cli("job", "stop", job)
    epochs_logged = _epochs(run)
    same = _difference(ref, run) if status == "SUCCEEDED" else None
    outcome = {"SUCCEEDED": "recovered", None: f"hung (stopped after {JOB_LIMIT_S} s)"}.get(
        status, f"job {status}: {_last_line(work / 'double.log')}")
    return {"fault": "double-node", "injected": f"SIGKILL to node {first} ({address(first)}) during epoch {at_epoch} "
            f"of {epochs}, to node {second} {DOUBLE_GAP_S} s later (the group restarting), node {first} replaced "
            f"{REPLACE_AFTER_S} s after that", "outcome": outcome, "seconds_after_fault": round(seconds, 1),
            "epochs_logged": epochs_logged, "each_epoch_once": len(epochs_logged) == len(set(epochs_logged)),
            "max_test_metric_difference": same,
            "passed": status is not None and len(epochs_logged) == len(set(epochs_logged))
            and (status != "SUCCEEDED" or (epochs_logged == list(range(1, epochs + 1)) and same <= 1e-6))
            and (status == "SUCCEEDED" or bool(_last_line(work / "double.log")))}


def fault_storage_outage(cluster: NetnsCluster, data: Path, work: Path, epochs: int) -> dict[str, Any]:
    """The shared storage read-only (writes fail, as on an NFS soft mount that lost its server)
    for STORAGE_OUTAGE_S s mid-epoch, on every node: the job ends recovered or failed with one
    line, and the run folder is intact (`slifmr train --resume` finishes it, with the reference's
    metrics, when the job failed)."""
    ref = _reference(cluster, data, work, epochs)
    storage = work / "storage"
    storage.mkdir(exist_ok=True)
    run = storage / "run"
    job = cluster.submit("storage", *_train_cmd(data, run, epochs))
    _, at_epoch = _mid_training(cluster, run)
    t0 = time.monotonic()
    mounted = cluster.storage_read_only(storage, on=True)
    try:
        status, _ = cluster.wait_job(job, STORAGE_OUTAGE_S)
    finally:
        cluster.storage_read_only(storage, on=False)
    if status is None:
        status, _ = cluster.wait_job(job, JOB_LIMIT_S)
    cluster.wait_job(job, 0, work / "storage.log")
    seconds = time.monotonic() - t0
    if status is None:
        cluster.ray_cli("job", "stop", job)
    line = _last_line(work / "storage.log")
    resumed = None
    if status == "FAILED":  # the folder must still be a resumable run
        again, _ = cluster.wait_job(cluster.submit("storage-resume", sys.executable, "-m", "slifmr", "-q", "train",
                                                   "--resume", str(run), "--workers", "2", "--max-failures", "2"),
                                    JOB_LIMIT_S, work / "storage-resume.log")
        resumed = again
    epochs_logged = _epochs(run)
    ended = status == "SUCCEEDED" or resumed == "SUCCEEDED"
    same = _difference(ref, run) if ended else None
    outcome = {"SUCCEEDED": "recovered", None: f"hung (stopped after {JOB_LIMIT_S} s)"}.get(
        status, f"job {status}: {line}; then --resume {resumed}")
    return {"fault": "storage-outage", "injected": f"the run folder's storage read-only in {mounted} node mount "
            f"namespace(s) for {STORAGE_OUTAGE_S} s from epoch {at_epoch} of {epochs}", "outcome": outcome,
            "seconds_after_fault": round(seconds, 1), "epochs_logged": epochs_logged,
            "each_epoch_once": epochs_logged == list(range(1, len(epochs_logged) + 1)),
            "max_test_metric_difference": same,
            "passed": status is not None and ended and epochs_logged == list(range(1, epochs + 1)) and same <= 1e-6
            and (status == "SUCCEEDED" or bool(line))}


FAULTS = ("worker-node", "link-cut", "head-sweep", "double-node", "storage-outage")


def write_results(rows: list[dict[str, Any]], command: str) -> None:
    """results/cluster_faults.json and the RESULTS.md section: the faults of this invocation
    replace their earlier rows; the other faults' rows stay, each with the command that made it."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB"
    out = results.results_path("cluster_faults")
    earlier = json.loads(out.read_text()) if out.exists() else {"rows": []}
    measured = results.commit()
    rows = [{**r, "command": command, "commit": measured["commit"], "dirty": measured["dirty"]} for r in rows]
    kept = [{"command": earlier.get("command"), **r} for r in earlier["rows"] if r["fault"] not in {x["fault"] for x in rows}]
    rows = sorted(kept + rows, key=lambda r: FAULTS.index(r["fault"]))
    results.write_results("cluster_faults", {
        "nodes": {n: address(n) for n in NODES}, "cpus_per_node": 1, "link_cut_seconds": LINK_CUT_S,
        "double_gap_seconds": DOUBLE_GAP_S, "replace_after_seconds": REPLACE_AFTER_S,
        "storage_outage_seconds": STORAGE_OUTAGE_S, "rows": rows}, note=machine, command=command, measured=measured)
    lines = ["### Faults on a multi-node cluster in network namespaces (issue 31)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows)) + "  ",
             f"Machine: {machine}; 3 Ray nodes (1 CPU each) in their own network namespaces "
             "(10.77.0.1-3, veth pairs to a bridge namespace), jobs through `ray job submit`, the local disk as shared "
             "storage.", "", "| fault | injected | outcome | seconds after the fault | epochs logged | passed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        outcome = r["outcome"]
        if r.get("max_test_metric_difference") is not None:
            outcome += f"; test metrics vs an uninterrupted run: max difference {r['max_test_metric_difference']:.1e}"
        lines.append(f"| {r['fault']} | {r['injected']} | {outcome} | {r['seconds_after_fault']} | {r['epochs_logged']} | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    results.write_section("CLUSTER_FAULTS", "\n".join(lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/runs/cluster_faults", help="work folder (the shared storage)")
    p.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: ip netns, veth pairs and a bridge")
    work = Path(args.out).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = work / "data"
    # a few seconds an epoch with 2 workers here, so that faults land inside an epoch
    sh(str(BIN / "slifmr"), "-q", "data", "synth", "--users", "3000", "--items", "800", "--interactions", "80000",
       "--out", str(data))
    cluster = NetnsCluster(work)
    rows = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` removes the namespaces
    try:
        cluster.up()
        print(f"cluster up: {', '.join(f'{n} {address(n)}' for n in NODES)}", flush=True)
        for fault in args.faults:
            if fault == "worker-node":
                row = fault_worker_node(cluster, data, work, args.epochs)
            elif fault == "link-cut":
                row = fault_link_cut(cluster, data, work, args.epochs)
            elif fault == "double-node":
                row = fault_double_node(cluster, data, work, args.epochs)
            elif fault == "storage-outage":
                row = fault_storage_outage(cluster, data, work, args.epochs)
            else:
                row = fault_head_sweep(cluster, data, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if fault != args.faults[-1]:  # the next fault starts on a whole cluster
                cluster.down()
                cluster.up()
    finally:
        cluster.down()
    write_results(rows, results.this_command())
    return 0 if rows and all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
