"""Cost against size: full-graph, two-hop neighbor-sampled, one-hop history-sampled and BPR-MF
training on synthetic graphs of growing size, 1 and 2 Ray Train workers (issues 5, 14).

    python -m benchmarks.scale.scale --users 100000 300000 1000000 --steps 4 --threads 1 \
        --set model.ridge_weight=0 --multi-worker-modes history mf --full-epoch 1000000

Each size has users U, items U/10, about 12 U interactions, U/5 entities, U KG triples and one
64-d modality (slifmr.data.synth, seed 0; cached under --runs/data). Each configuration runs
`slifmr train` as a subprocess: 2 epochs (epoch 2 rebuilds S(t) with the approximate kNN),
each capped at --steps optimiser steps of global batch --batch (8192), evaluation on 2,000
sampled users. Measured from the run's metrics.jsonl (epoch 2): seconds per step, training
interactions per second, fusion seconds (kNN + graph rebuild), bytes of gradient sync per
step; peak memory = the largest sum of RSS over the driver's whole process tree (Ray
included), polled every 0.2 s. "epoch seconds" = seconds per step x the steps of a full
pass + the epoch's time outside the steps (fusion, graph build, evaluation), so sizes whose
full epoch would take hours are still compared on what they cost. Each worker gets --threads
torch threads (1: rates per core); mode mf (variant mf, same batch and row-wise updates, no
propagation) is the floor the other modes are compared with. --full-epoch U also trains one
whole uncapped epoch (--full-epoch-mode, default history) on --full-epoch-workers at that size
(global batch --full-epoch-batch, 32768): the proof it fits. 2-worker neighbor-sampled runs
at --grad-sync-sizes are also measured with a dense all-reduce. --rows reads rows printed
before instead of re-running them; --set passes config overrides to every run.

Writes benchmarks/results/scale.json, scale.png (log-log cost and memory against training
interactions) and the SCALE block of RESULTS.md, with the fitted exponent of sampled-mode
epoch seconds against interactions. `dataset`, `run` and `measure` are what the other scale and
speed benchmarks train with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.lib import results


def dataset(users: int, root: Path) -> tuple[Path, int]:
    from slifmr.data.format import TRAIN, read_dataset, write_dataset
    from slifmr.data.synth import synthesize

    path = root / f"u{users}"
    if not (path / "meta.json").exists():
        ds = synthesize(users=users, items=users // 10, interactions=13 * users, entities=users // 5, triples=users,
                        relations=8, modalities=(("text", 64),), clusters=50, seed=0)
        write_dataset(ds, path, overwrite=True)
    ds = read_dataset(path)
    return path, int((ds.split == TRAIN).sum())


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that just exited
            total += p.memory_info().rss
    return total


def run(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> tuple[int, float, int]:
    """(exit status, wall seconds, peak RSS bytes of the process tree). With a PYTHONPATH in `env`
    (another checkout) the command runs in that folder: `python -m` puts its working folder first
    on sys.path, so run from this checkout it would import this checkout's slifmr instead."""
    start, peak = time.time(), 0
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=(env or {}).get("PYTHONPATH"),
                                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        ps = psutil.Process(proc.pid)
        done = threading.Event()

        def poll() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(ps))
                time.sleep(0.2)

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        rc = proc.wait()
        done.set()
        t.join()
    return rc, time.time() - start, peak


def measure(data: Path, n_train: int, mode: str, workers: int, grad_sync: str, steps: int, out: Path, batch: int,
            epochs: int = 2, fanout: str = "10,5", threads: int = 0, extra: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """One `slifmr train` run (`extra`: more of its options; `env`: its environment, e.g. a
    PYTHONPATH naming another checkout) and what its last epoch measured."""
    # mf: the floor, BPR-MF (variant mf: no propagation) with the same sparse row-wise updates;
    # history-sampled: history with train.history_grad=sampled (LTGNN: neighbours' rows too)
    sampling = "history" if mode in ("mf", "history-sampled") else mode
    data, out = Path(data).resolve(), Path(out).resolve()  # the command may run in another folder (run)
    cmd = [sys.executable, "-m", "slifmr", "train", "--data", str(data), "--out", str(out), "--epochs", str(epochs),
           "--workers", str(workers), "--sampling", sampling, "--set", "model.knn=approx", "--set", "train.eval_users=2000",
           "--set", f"train.grad_sync={grad_sync}", "--set", "train.patience=100", "--set", f"train.batch_size={batch}",
           "--set", f"train.threads={threads}"]
    if mode == "mf":
        cmd += ["--variant", "mf"]
    if mode == "history-sampled":
        cmd += ["--set", "train.history_grad=sampled"]
    if sampling != "full":
        cmd += ["--fanout", fanout]
    cmd += list(extra)
    if steps:
        cmd += ["--set", f"train.steps_per_epoch={steps}"]
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rc, wall, peak = run(cmd, out.parent / f"{out.name}.log", env)
    row: dict[str, Any] = {"mode": mode, "workers": workers, "threads": threads, "grad_sync": grad_sync,
                           "batch_size": batch, "fanout": fanout,
                           "train_interactions": n_train,
                           "exit_status": rc, "wall_seconds": wall, "peak_rss_gb": peak / 1e9,
                           "command": " ".join(["slifmr", *cmd[3:]])}
    if rc != 0:
        row["error"] = (out.parent / f"{out.name}.log").read_text()[-2000:]
        return row
    r = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    import yaml

    model = yaml.safe_load((out / "config.yaml").read_text())["model"]  # the method's switches of the run
    row.update({"ridge_weight": model["ridge_weight"], "ridge_k": model["ridge_k"], "knn": model["knn"]})
    per_step = r["train_seconds"] / r["steps"]
    full_steps = -(-n_train // batch)
    outside = r["epoch_seconds"] - r["train_seconds"]
    row.update({
        "steps": r["steps"], "seconds_per_step": per_step, "interactions_per_second": r["steps"] * batch / r["train_seconds"],
        "interactions_per_second_per_worker": r["steps"] * batch / r["train_seconds"] / max(workers, 1),
        "memory_seconds": r.get("memory_seconds", 0.0),
        "sampling_seconds_per_step": r["sampling_seconds"] / r["steps"], "comm_seconds_per_step": r["comm_seconds"] / r["steps"],
        "grad_bytes_per_step": r["grad_bytes_per_step"], "fusion_seconds": r["fusion_seconds"],
        "knn_seconds": r["knn_seconds"], "ridge_seconds": r.get("ridge_seconds", 0.0),
        "ridge_weight_chosen": r.get("ridge_weight"), "knn_recall": r["knn_recall"], "eval_seconds": r["eval_seconds"],
        "outside_steps_seconds": outside, "epoch_seconds_estimated": per_step * full_steps + outside,
        "epoch_seconds_measured": r["epoch_seconds"] if not steps else None,
    })
    return row


def _overrides(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(x for kv in args.set for x in ("--set", kv))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--modes", nargs="+", default=["full", "neighbor", "history", "mf"],
                    help="full graph, two-hop neighbor sampling, one hop over historical embeddings (history; "
                         "history-sampled: with train.history_grad=sampled), and the floor: BPR-MF with the same "
                         "batch and row-wise updates (mf)")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8192, help="global batch of the capped runs")
    ap.add_argument("--full-epoch", type=int, help="also train one uncapped sampled epoch on 2 workers at this size")
    ap.add_argument("--full-epoch-batch", type=int, default=32768)
    ap.add_argument("--full-epoch-fanout", default="10,5")
    ap.add_argument("--full-epoch-mode", default="history", choices=["neighbor", "history"])
    ap.add_argument("--full-epoch-workers", type=int, nargs="+", default=[2],
                    help="worker counts of the whole epoch (2 and 1: the speed-up of a second worker)")
    ap.add_argument("--fanout", default="10,5", help="train.fanout of the sampled modes (history: its first hop)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1: rates per core)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run (e.g. model.ridge_weight=0: no ridge head)")
    ap.add_argument("--multi-worker-modes", nargs="*", help="modes also measured with more than one worker "
                    "(default: every mode)")
    ap.add_argument("--rows", help="JSON lines this script printed before: those configurations are read, not re-run")
    ap.add_argument("--grad-sync-sizes", nargs="*", type=int, default=[10_000, 1_000_000],
                    help="sizes whose 2-worker sampled run is also measured with a dense all-reduce")
    ap.add_argument("--runs", default=str(results.RUNS / "scale"))
    args = ap.parse_args()
    runs_dir = Path(args.runs)

    earlier = {}
    if args.rows:
        for line in Path(args.rows).read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                earlier[(r["users"], r["mode"], r["workers"], r["grad_sync"], r["steps"] if r.get("steps") and r["epoch_seconds_measured"] is None else 0)] = r
    rows: list[dict[str, Any]] = []
    for users in args.users:
        data, n_train = dataset(users, runs_dir / "data")
        for mode in args.modes:
            for workers in args.workers:
                if workers > 1 and args.multi_worker_modes is not None and mode not in args.multi_worker_modes:
                    continue
                dense_too = mode == "neighbor" and workers > 1 and users in args.grad_sync_sizes
                for sync in (["dense", "auto"] if dense_too else ["auto"]):
                    row = earlier.get((users, mode, workers, sync, args.steps))
                    if row is None:
                        row = measure(data, n_train, mode, workers, sync, args.steps,
                                      runs_dir / f"u{users}-{mode}-w{workers}-{sync}", args.batch,
                                      fanout=args.fanout, threads=args.threads, extra=_overrides(args))
                        row["users"] = users
                        print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
                    rows.append(row)
                    write(args, rows, [])  # as it goes: an interrupted study keeps what it measured
    full_epochs = []
    for workers in args.full_epoch_workers if args.full_epoch else []:
        # an uncapped run printed before is read, not re-run (key: steps 0)
        row = earlier.get((args.full_epoch, args.full_epoch_mode, workers, "auto", 0))
        if row is None or row["exit_status"] != 0:
            data, n_train = dataset(args.full_epoch, runs_dir / "data")
            row = measure(data, n_train, args.full_epoch_mode, workers, "auto", 0,
                          runs_dir / (f"u{args.full_epoch}-epoch" + ("" if workers == 2 else f"-w{workers}")),
                          args.full_epoch_batch, epochs=1, fanout=args.full_epoch_fanout, threads=args.threads,
                          extra=_overrides(args))
            row["users"] = args.full_epoch
            print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
        full_epochs.append(row)
        write(args, rows, full_epochs)
    print(write(args, rows, full_epochs))
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]], full_epochs: list[dict[str, Any]]) -> str:
    """scale.json, scale.png and the SCALE block of RESULTS.md from the rows so far."""
    fits = {}
    for mode in args.modes:
        for workers in args.workers:
            pts = [(r["train_interactions"], r["epoch_seconds_estimated"]) for r in rows
                   if r["mode"] == mode and r["workers"] == workers and r["grad_sync"] == "auto" and r["exit_status"] == 0]
            if len(pts) >= 2:
                x, y = np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts])
                fits[f"{mode}-w{workers}"] = float(np.polyfit(x, y, 1)[0])

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, local Ray, gloo"
    payload = {"batch_size": args.batch, "steps_per_run": args.steps,
               "runs": rows, "full_epoch": next((r for r in full_epochs if r["workers"] == 2), None),
               "full_epochs": full_epochs, "fitted_exponent": fits}
    results.write_results("scale", payload, note=machine)
    doc = {"command": results.this_command(), "machine": machine, **payload}
    plot(rows)
    results.write_section("SCALE", section(doc))
    return section(doc)


def section(doc: dict[str, Any]) -> str:
    lines = ["| users | train interactions | mode | workers | threads | grad sync | s/step | interactions/s | "
             "per worker | x MF | epoch s (est.) | fusion s | memory s | kNN recall | grad MB/step | sync s/step | "
             "peak RSS GB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    mf = {(r["users"], r["workers"]): r["interactions_per_second"] for r in doc["runs"]
          if r["mode"] == "mf" and r["exit_status"] == 0}
    for r in doc["runs"]:
        head = (f"| {r['users']:,} | {r['train_interactions']:,} | {r['mode']} | {r['workers']} | {r.get('threads', '')} | "
                f"{r['grad_sync']} | ")
        if r["exit_status"] != 0:
            lines.append(head + f"failed (exit {r['exit_status']}) |" + " |" * 10 + f" {r['peak_rss_gb']:.1f} |")
            continue
        recall = "" if r["knn_recall"] is None else f"{r['knn_recall']:.3f}"
        floor = mf.get((r["users"], r["workers"]))
        ratio = f"{r['interactions_per_second'] / floor:.2f}" if floor else ""
        per_worker = r.get("interactions_per_second_per_worker", r["interactions_per_second"] / max(r["workers"], 1))
        lines.append(head + f"{r['seconds_per_step']:.3f} | {r['interactions_per_second']:,.0f} | {per_worker:,.0f} | {ratio} | "
                     f"{r['epoch_seconds_estimated']:,.0f} | {r['fusion_seconds']:.1f} | {r.get('memory_seconds', 0.0):.1f} | "
                     f"{recall} | {r['grad_bytes_per_step'] / 1e6:.2f} | {r['comm_seconds_per_step']:.3f} | {r['peak_rss_gb']:.1f} |")
    fits = ", ".join(f"{k}: {v:.2f}" for k, v in doc["fitted_exponent"].items())
    body = (f"### Scale: full-graph, two-hop sampled, one-hop history and BPR-MF training (issues 5, 14)\n\n"
            f"Command: `{doc['command']}`  \n"
            f"Machine: {doc['machine']}. Synthetic graphs (users U, items U/10, ~12 U interactions, U KG triples, one "
            f"64-d modality); global batch {doc['batch_size']}, {doc['steps_per_run']} steps per epoch measured, epoch 2 "
            "reported (it includes the fusion: approximate kNN + graph rebuild); evaluation on 2,000 sampled users. "
            "'epoch s (est.)' = s/step x steps of a full pass + the epoch's time outside the steps. Grad MB/step: the "
            "gradient buffers one worker puts into all-reduce or gets from all-gather per step (0 with 1 worker); sync "
            "s/step: seconds in those collectives. Per worker: interactions/s divided by workers (with 1 thread per "
            "worker: per core). x MF: interactions/s over BPR-MF's (mode mf: variant mf, same batch, same row-wise "
            "updates, no propagation) at the same size and workers. Memory s: refreshing the historical embeddings "
            "(mode history), part of the epoch outside the steps. "
            "Peak RSS: the whole process tree (driver, Ray, workers).\n\n" + "\n".join(lines)
            + f"\n\nFitted exponent of epoch seconds against training interactions (log-log slope): {fits}.\n")
    done = {fe["workers"]: fe for fe in doc.get("full_epochs", []) if fe["exit_status"] == 0}
    for fe in doc.get("full_epochs", []):
        if fe["exit_status"] == 0:
            body += (f"\nOne whole sampled epoch ({fe['mode']}), {fe['workers']} worker(s) x {fe['threads']} thread(s), "
                     f"global batch {fe['batch_size']:,}, fan-outs {fe['fanout']}, {fe['users']:,} users / "
                     f"{fe['train_interactions']:,} training interactions: {fe['steps']} steps per worker, "
                     f"{fe['epoch_seconds_measured']:,.0f} s ({fe['seconds_per_step'] * fe['steps']:,.0f} s of steps at "
                     f"{fe['interactions_per_second']:,.0f} interactions/s, {fe['outside_steps_seconds']:,.0f} s outside "
                     f"them), peak RSS {fe['peak_rss_gb']:.1f} GB (`{fe['command']}`).\n")
        else:
            body += f"\nThe whole sampled epoch at {fe['users']:,} users on {fe['workers']} worker(s) failed (exit {fe['exit_status']}).\n"
    if 1 in done and 2 in done:
        body += (f"\nSecond worker, whole epoch, same global batch: {done[2]['interactions_per_second'] / done[1]['interactions_per_second']:.2f}x "
                 f"the steps' interactions/s, {done[1]['epoch_seconds_measured'] / done[2]['epoch_seconds_measured']:.2f}x the epoch.\n")
    return body + "\n![scale](results/scale.png)\n"


def plot(rows: list[dict[str, Any]]) -> None:
    plt = results.pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(r["mode"], r["workers"]) for r in rows})
    for mode, workers in series:
        pts = sorted((r["train_interactions"], r["epoch_seconds_estimated"], r["peak_rss_gb"]) for r in rows
                     if (r["mode"], r["workers"]) == (mode, workers) and r["grad_sync"] == "auto" and r["exit_status"] == 0)
        if not pts:
            continue
        x, t, m = zip(*pts)
        style = {"full": "--s", "neighbor": "-o", "history": "-^", "history-sampled": "-v", "mf": ":x"}.get(mode, "-o")
        ax_t.plot(x, t, style, label=f"{mode}, {workers} worker(s)")
        ax_m.plot(x, m, style, label=f"{mode}, {workers} worker(s)")
    for ax, title in ((ax_t, "epoch seconds (estimated)"), (ax_m, "peak RSS (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training interactions")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    results.save_figure(fig, "scale")  # redrawn after every row


if __name__ == "__main__":
    raise SystemExit(main())
