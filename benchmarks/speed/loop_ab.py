"""Seconds per training step of this checkout against an earlier one, alternating runs (A/B),
so that a change to the loop is judged by more than one noisy epoch.

    git worktree add /tmp/old <commit>
    python -m benchmarks.speed.loop_ab --old-tree /tmp/old --repeat 3

Configurations, each a `slifmr train` subprocess with one torch thread: ml-100k full-graph
(slifmr defaults, 4 epochs) and the 10,000-user synthetic set of benchmarks/scale/scale.py with
history sampling (3 epochs of 20 steps, approximate kNN, 2,000 validation users). Per run: the
steps' seconds over the steps taken, epochs after the first (metrics.jsonl's train_seconds and
steps). Each repeat runs the old tree, then this one. Writes benchmarks/results/loop-ab.json,
loop-ab.png and the LOOP_AB block of RESULTS.md.
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

from benchmarks.lib import results
from benchmarks.scale.scale import dataset

CONFIGS = {
    "ml-100k full": ["--epochs", "4"],
    "10,000 users history": ["--epochs", "3", "--sampling", "history", "--set", "train.steps_per_epoch=20",
                             "--set", "model.knn=approx", "--set", "train.eval_users=2000"],
}


def seconds_per_step(tree: Path, args: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # run in the tree: `python -m` puts its working folder first on sys.path, ahead of PYTHONPATH
    subprocess.run([sys.executable, "-m", "slifmr", "-q", "train", "--out", str(out.resolve()), "--set", "train.threads=1",
                    *args], env=env, cwd=tree, check=True, capture_output=True)
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln][1:]
    return sum(r["train_seconds"] for r in lines) / sum(r["steps"] for r in lines)


def plot(rows: list[dict]) -> None:
    """Seconds per step of every run, old and new, per configuration: results/loop-ab.png."""
    plt = results.pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3))
    for ax, r in zip(axes if len(rows) > 1 else [axes], rows):
        ax.boxplot([r["old_seconds_per_step"], r["new_seconds_per_step"]], tick_labels=["old", "new"])
        ax.set(title=r["mode"], ylabel="seconds per step")
    fig.tight_layout()
    results.save_figure(fig, "loop-ab")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", help="the checkout to compare against (required unless --replot)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--replot", action="store_true", help="measure nothing: redraw the PNG from results/loop-ab.json")
    args = ap.parse_args()
    if args.replot:
        plot(results.read_results("loop-ab")["rows"])
        return 0
    if not args.old_tree:
        ap.error("--old-tree is required")
    data10k, _ = dataset(10_000, results.RUNS / "core_speed" / "data")
    trees = {"old": Path(args.old_tree).resolve(), "new": results.ROOT}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in CONFIGS.items():
            extra = extra + (["--data", str(data10k.resolve())] if "users" in name else [])
            runs: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.repeat):
                for which, tree in trees.items():
                    runs[which].append(seconds_per_step(tree, extra, Path(tmp) / which))
                    print(f"{name} {which}: {runs[which][-1]:.4f} s/step", flush=True)
            old, new = statistics.mean(runs["old"]), statistics.mean(runs["new"])
            rows.append({"mode": name, "workers": 0, "threads": 1, "old_seconds_per_step": runs["old"],
                         "new_seconds_per_step": runs["new"], "ratio_new_over_old": new / old})
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, one torch thread, nothing else running"
    lines = ["### The training loop, this checkout against an earlier one (A/B)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. Seconds per step after the first epoch, each repeat old then new.", "",
             "| configuration | old s/step (runs) | new s/step (runs) | new / old (means) |", "|---|---|---|---|"]
    lines += [f"| {r['mode']} | {', '.join(f'{x:.4f}' for x in r['old_seconds_per_step'])} | "
              f"{', '.join(f'{x:.4f}' for x in r['new_seconds_per_step'])} | {r['ratio_new_over_old']:.3f} |" for r in rows]
    lines += ["", "![loop A/B](results/loop-ab.png)"]
    results.publish("LOOP_AB", "loop-ab", {"rows": rows}, lines, note=machine)
    plot(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
