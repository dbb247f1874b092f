"""Accuracy against wall-clock at scale, on planted data: the scale preset of slifmr against
history-sampled LightGCN, BPR-MF and the co-occurrence ridge peer, same machine, same workers,
same time budget.

    python -m benchmarks.quality.planted_study --users 1000000 --budget 600 --workers 2
    python -m benchmarks.quality.planted_study --users 1000000 --budget 600 --methods "slifmr (preset scale)"  # re-run one

The dataset is `slifmr data synth --planted` (users U, items U/10, 10 U interactions, seed 0;
cached under --runs/data): latent factors, item clusters shaping features and KG, power-law
degrees, so validation Recall@20 measures what a model recovers. Each method runs as
`slifmr train` on --workers Ray Train workers (cooc_ridge, a closed form: one process with the
same cores) with global batch --batch and learning rate --lr for every gradient method, and
validation on the same seeded 10,000 users; after --budget seconds of wall-clock from its launch
(set-up included) it gets Ctrl-C, and the curve is the validation Recall@20 of every epoch
finished by then, at the wall-clock second its epoch ended (test metrics are not used; a
closed form that finishes writes them as any run does). slifmr's validation line is the best of
its `model.ridge_blend` weights on these users, as its run selects it. Rows of methods
not named by --methods are kept from the last results at the same size, budget and batch.

Writes benchmarks/results/planted-study.json, planted-study.png and the PLANTED_STUDY block
of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.lib import results

METHODS = {  # label: (variant, preset, further config overrides)
    "slifmr (preset scale)": ("slifmr", "scale", ()),  # the union head, the preset's
    "slifmr (preset scale, z head)": ("slifmr", "scale", ("model.ridge_neighbours=z",)),
    "lightgcn (history)": ("lightgcn", "scale", ()),
    "mf (history)": ("mf", "scale", ()),
    "cooc_ridge": ("cooc_ridge", None, ()),
}


def dataset(users: int, root: Path) -> Path:
    from slifmr.data.format import write_dataset
    from slifmr.data.synth import synthesize_planted

    path = root / f"planted-u{users}"
    if not (path / "meta.json").exists():
        write_dataset(synthesize_planted(users=users, items=users // 10, interactions=10 * users,
                                         modalities=(("text", 64),), seed=0), path, overwrite=True)
    return path


def run(label: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    variant, preset, overrides = METHODS[label]
    cmd = [sys.executable, "-m", "slifmr", "train", "--data", str(data), "--out", str(out), "--variant", variant,
           "--set", "train.eval_users=10000", *(a for o in overrides for a in ("--set", o))]
    if preset:
        cmd += ["--preset", preset, "--workers", str(args.workers), "--epochs", "1000",
                "--set", f"train.batch_size={args.batch}", "--set", f"train.lr={args.lr}",
                "--set", "train.threads=1", "--set", "train.patience=1000"]
    else:
        cmd += ["--set", f"train.threads={args.workers}"]
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc = proc.wait(timeout=args.budget)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # slifmr stops on Ctrl-C; what was logged stays
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
                    p.kill()
                rc = proc.wait()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    points = [{"seconds": r["epoch_start_unix_seconds"] + r["epoch_seconds"] - start, "epoch": r["epoch"],
               "valid_recall@20": r["valid"]["recall@20"], "fused": r.get("fused", False),
               "ridge_weight": r.get("ridge_weight"), "knn_recall": r.get("knn_recall")} for r in lines]
    points = [p for p in points if p["seconds"] <= args.budget]
    return {"method": label, "variant": variant, "preset": preset, "exit_status": rc,
            "workers": args.workers if preset else 0, "threads": 1 if preset else args.workers,
            "command": " ".join(["slifmr", *cmd[3:]]), "points": points,
            "best_valid_recall@20": max((p["valid_recall@20"] for p in points), default=None)}


def at(points: list[dict[str, Any]], seconds: float) -> float | None:
    """The best validation Recall@20 reached by `seconds` of wall-clock (None: no epoch yet)."""
    seen = [p["valid_recall@20"] for p in points if p["seconds"] <= seconds]
    return max(seen) if seen else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds per method, set-up included")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32768)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--runs", default=str(results.RUNS / "planted"))
    args = ap.parse_args()
    runs = Path(args.runs)
    t0 = time.time()
    data = dataset(args.users, runs / "data")
    print(f"dataset {data} ready in {time.time() - t0:.0f} s", flush=True)
    rows = []
    earlier = results.results_path("planted-study")
    if earlier.exists():  # methods measured before at this size and budget, and not re-run now
        doc = json.loads(earlier.read_text())
        if (doc["users"], doc["budget_seconds"], doc["batch_size"]) == (args.users, args.budget, args.batch):
            rows = [r for r in doc["runs"] if r["method"] not in args.methods]
    for label in args.methods:
        slug = METHODS[label][0] + "".join(f"-{o.split('=')[1]}" for o in METHODS[label][2])
        rows.append(run(label, data, runs / f"u{args.users}-{slug}", args))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "points"}), flush=True)
        write(args, rows, data)
    print(write(args, rows, data))
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]], data: Path) -> str:
    meta = json.loads((data / "meta.json").read_text())
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, local Ray, gloo"
    doc = {"dataset": str(data), "users": args.users,
           "budget_seconds": args.budget, "batch_size": args.batch, "lr": args.lr, "runs": rows}
    results.write_results("planted-study", doc, note=machine)
    plot(rows, args.budget)
    marks = [args.budget / 4, args.budget / 2, args.budget]
    lines = ["### Accuracy against wall-clock on planted data (scale preset and peers)", "",
             f"Command: `{command}`  ",
             f"Machine: {machine}. Dataset: planted, {meta['num_users']:,} users, {meta['num_items']:,} items, "
             f"{meta['num_interactions']:,} interactions; global batch {args.batch:,}, lr {args.lr:g} for every "
             f"gradient method; validation Recall@20 on the same 10,000 sampled users; budget {args.budget:.0f} s "
             "of wall-clock per method from its launch (set-up included). Best validation Recall@20 reached by "
             "each time:", "",
             "| method | workers x threads | epochs | " + " | ".join(f"by {m:.0f} s" for m in marks) + " | command |",
             "|---|---|---|" + "---|" * len(marks) + "---|"]
    for r in rows:
        cells = [("" if at(r["points"], m) is None else f"{at(r['points'], m):.4f}") for m in marks]
        shape = f"{r['workers']} x 1" if r["workers"] else f"1 x {r['threads']}"
        lines.append(f"| {r['method']} | {shape} | {len(r['points'])} | " + " | ".join(cells) + f" | `{r['command']}` |")
    lines += ["", "![accuracy against wall-clock](results/planted-study.png)"]
    body = "\n".join(lines)
    results.write_section("PLANTED_STUDY", body)
    return body


def plot(rows: list[dict[str, Any]], budget: float) -> None:
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        pts = r["points"]
        if pts:
            ax.plot([p["seconds"] for p in pts], [p["valid_recall@20"] for p in pts], "o-", label=r["method"])
    ax.set(xlim=(0, budget), xlabel="wall-clock seconds from launch", ylabel="validation Recall@20 (10,000 users)",
           title="planted data: accuracy against time, same cores")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    results.save_figure(fig, "planted-study")


if __name__ == "__main__":
    raise SystemExit(main())
