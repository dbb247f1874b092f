"""`slifmr serve` over HTTP on ml-100k: latency and throughput of POST /recommend, and every
variant's export against `slifmr recommend`.

    python -m benchmarks.serving.http --run benchmarks/runs/head-choice2/slifmr-seed0

(as a module: run as a file, this file would shadow the standard library's `http`).

Part 1: ease, cooc_ridge and pop are trained on ml-100k (closed forms: seconds), each exported,
and the export's lists (the numpy scorer and the torch batch path of `recommend --all
--workers`) compared with `slifmr recommend`'s for every user, top 20.
Part 2: the slifmr run's export (and the ease export) served by `slifmr serve` with 1 and 2
replicas, each replica a process with one thread for faiss/BLAS (OMP_NUM_THREADS=1): latency
p50/p99 of one client sending requests one after another (keep-alive; k=20, users drawn at
random), and users/s of 4 client threads at once for 10 s. The clients run on the same 2-core
machine as the servers, so the 2-replica figure shares the cores with its clients.
Writes benchmarks/results/http-serving.json and the HTTP SERVING block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lib import results

K = 20


def _post(conn: http.client.HTTPConnection, body: dict[str, Any]) -> dict[str, Any]:
    conn.request("POST", "/recommend", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {data}")
    return data


def _serve(export: Path, port: int, replicas: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slifmr", "serve", str(export), "--port", str(port),
                             "--replicas", str(replicas)], env=env, stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                # every replica up: each answers on its own socket; a few rounds reach them all
                time.sleep(2.0)
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not come up")


def _latency(port: int, users: list[str], requests: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for u in users[:50]:  # warm: page the memory-mapped arrays in
        _post(conn, {"user": u, "k": K})
    times = []
    for u in rng.choice(users, requests):
        start = time.perf_counter()
        _post(conn, {"user": str(u), "k": K})
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    return {"requests": requests, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def _throughput(port: int, users: list[str], clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def client(c: int) -> None:
        rng = np.random.default_rng(c)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.perf_counter() < stop:
            _post(conn, {"user": str(rng.choice(users)), "k": K})
            done[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def _compare(run: Any, export: Path) -> dict[str, int]:
    """Users whose export lists (numpy scorer; torch batch) differ from `slifmr recommend`'s top K."""
    from slifmr.export import load_export

    ds, e = run.dataset, load_export(export)
    users = [str(u) for u in e.user_ids]
    expected: dict[str, list[str]] = {}
    for row in run.recommend(users, k=K).to_pylist():
        expected.setdefault(row["user"], []).append(row["item"])
    batch: dict[str, list[str]] = {}
    out = e.recommend_batch(np.arange(ds.num_users), K)
    for u, i in zip(out["user"], out["item"]):
        batch.setdefault(str(u), []).append(str(i))
    return {"users": len(users),
            "scorer_differs": sum([i for i, _ in e.recommend(u, K)] != expected.get(u, []) for u in users),
            "batch_differs": sum(batch.get(u, []) != expected.get(u, []) for u in users)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished slifmr run on ml-100k")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18600)
    args = parser.parse_args()
    import torch

    import slifmr

    torch.set_num_threads(2)
    measured, started = results.commit(), time.time()
    work = Path(tempfile.mkdtemp(prefix="http-serving-"))
    rows: list[dict[str, Any]] = []
    run = slifmr.load_run(args.run)
    exports = {"slifmr": run.export(work / "slifmr")}
    for variant in ("ease", "cooc_ridge", "pop"):
        peer = slifmr.train(data=run.config.data, variant=variant, out=work / f"run-{variant}")
        exports[variant] = peer.export(work / variant)
        rows.append({"part": "export-equals-recommend", "variant": variant, "dataset": "ml-100k", "k": K,
                     **_compare(peer, exports[variant])})
    users = [str(u) for u in run.dataset.ids["users"]]
    for variant in ("slifmr", "ease"):
        for replicas in (1, 2):
            proc = _serve(exports[variant], args.port, replicas)
            try:
                row = {"part": "http", "variant": variant, "dataset": "ml-100k", "k": K, "replicas": replicas,
                       "threads_per_replica": 1, **_latency(args.port, users, args.requests),
                       "clients": 4, "users_per_s": _throughput(args.port, users, 4, args.seconds)}
            finally:
                proc.terminate()
                proc.wait(10)
            rows.append(row)
            print(row, flush=True)
    command = results.this_command()
    machine = f"{platform.node()} {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    payload = {"wall_seconds": time.time() - started, "rows": rows}
    lines = ["### Serving over HTTP and every variant's export (issue 41)", "",
             f"Command: `{command}`  ",
             f"Machine: {machine}; commit {(measured['commit'] or '?')[:7]}{'+changes' if measured['dirty'] else ''}.", "",
             "Every variant's export against `slifmr recommend` (ml-100k, every user, top 20):", "",
             "| variant | users | numpy scorer lists differing | torch batch lists differing |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['users']} | {r['scorer_differs']} | {r['batch_differs']} |"
              for r in rows if r["part"] == "export-equals-recommend"]
    lines += ["", "`slifmr serve` (POST /recommend, k=20; 1 thread per replica; clients on the same 2 cores):", "",
              "| export | replicas | p50 ms | p99 ms | users/s (4 clients) |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['replicas']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['users_per_s']:.0f} |"
              for r in rows if r["part"] == "http"]
    results.publish("HTTP SERVING", "http-serving", payload, lines, note=machine, measured=measured)


if __name__ == "__main__":
    main()
