"""Seconds per training step of this checkout against an earlier one, alternating runs (A/B),
so that a change to the loop is judged by more than one noisy epoch.

    git worktree add /tmp/old <commit>
    python benchmarks/loop_ab.py --old-tree /tmp/old --repeat 3

Configurations, each a `slifmr train` subprocess with one torch thread: ml-100k full-graph
(slifmr defaults, 4 epochs) and the 10,000-user synthetic set of benchmarks/scale.py with
history sampling (3 epochs of 20 steps, approximate kNN, 2,000 validation users). Per run: the
steps' seconds over the steps taken, epochs after the first (metrics.jsonl's train_seconds and
steps). Each repeat runs the old tree, then this one. Writes benchmarks/results/loop-ab.json
and the LOOP_AB section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from quality import HERE, publish
from scale import dataset

CONFIGS = {
    "ml-100k full": ["--epochs", "4"],
    "10,000 users history": ["--epochs", "3", "--sampling", "history", "--set", "train.steps_per_epoch=20",
                             "--set", "model.knn=approx", "--set", "train.eval_users=2000"],
}


def seconds_per_step(tree: Path, args: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "slifmr", "-q", "train", "--out", str(out), "--set", "train.threads=1", *args],
                   env=env, check=True, capture_output=True)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln][1:]
    return sum(r["train_seconds"] for r in lines) / sum(r["steps"] for r in lines)


def plot(rows: list[dict], path: Path) -> None:
    """Seconds per step of every run, old and new, per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3))
    for ax, r in zip(axes if len(rows) > 1 else [axes], rows):
        ax.boxplot([r["old_seconds_per_step"], r["new_seconds_per_step"]], tick_labels=["old", "new"])
        ax.set(title=r["mode"], ylabel="seconds per step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", help="the checkout to compare against (required unless --replot)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--replot", action="store_true", help="measure nothing: redraw the PNG from results/loop-ab.json")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads((HERE / "results" / "loop-ab.json").read_text())["rows"], HERE / "results" / "loop-ab.png")
        return 0
    if not args.old_tree:
        ap.error("--old-tree is required")
    data10k, _ = dataset(10_000, HERE / "runs" / "core_speed" / "data")
    trees = {"old": Path(args.old_tree).resolve(), "new": HERE.parent}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in CONFIGS.items():
            extra = extra + (["--data", str(data10k)] if "users" in name else [])
            runs: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.repeat):
                for which, tree in trees.items():
                    runs[which].append(seconds_per_step(tree, extra, Path(tmp) / which))
                    print(f"{name} {which}: {runs[which][-1]:.4f} s/step", flush=True)
            old, new = statistics.mean(runs["old"]), statistics.mean(runs["new"])
            rows.append({"mode": name, "workers": 0, "threads": 1, "old_seconds_per_step": runs["old"],
                         "new_seconds_per_step": runs["new"], "ratio_new_over_old": new / old})
    command = "python benchmarks/loop_ab.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, one torch thread, nothing else running"
    lines = ["## The training loop, this checkout against an earlier one (A/B)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. Seconds per step after the first epoch, each repeat old then new.", "",
             "| configuration | old s/step (runs) | new s/step (runs) | new / old (means) |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {', '.join(f'{x:.4f}' for x in r['old_seconds_per_step'])} | "
              f"{', '.join(f'{x:.4f}' for x in r['new_seconds_per_step'])} | {r['ratio_new_over_old']:.3f} |" for r in rows]
    lines += ["", "![loop A/B](results/loop-ab.png)"]
    publish("LOOP_AB", "loop-ab", {"command": command, "machine": machine, "rows": rows}, lines)
    plot(rows, HERE / "results" / "loop-ab.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
