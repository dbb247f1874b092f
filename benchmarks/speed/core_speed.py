"""Speed of two checkouts side by side, in one run: the distributed and scale benchmark
configurations trained by this checkout ("new") and by another one ("old", e.g. a git worktree
of the commit before a change), each configuration by both, one after the other.

    git worktree add /tmp/old <commit>
    python -m benchmarks.speed.core_speed --old-tree /tmp/old --users 10000 100000

Configurations: ml-100k (slifmr, full graph, 1 and 2 Ray Train workers, DDP; 2 workers with
DeepSpeed ZeRO-2), and each synthetic size of benchmarks/scale/scale.py (full graph and neighbor
sampling, 1 and 2 workers; 2-worker sampled runs with both gradient syncs). Every run is a
`slifmr train` subprocess (benchmarks.scale.scale's `measure`), its last epoch measured: seconds
per step, interactions per second and the epoch's time outside the steps. Writes
benchmarks/results/core-speed[-TAG].json, its PNG and the CORE_SPEED[_TAG] block of RESULTS.md
with new / old ratios (below 1.10 is the bar: no slowdown beyond 10%).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.lib import results
from benchmarks.scale.scale import dataset, measure

CONFIGS = [  # (mode, workers, grad_sync, extra options)
    ("full", 1, "auto", ()),
    ("full", 2, "auto", ()),
    ("neighbor", 1, "auto", ()),
    ("neighbor", 2, "auto", ()),
    ("neighbor", 2, "dense", ()),
    ("history", 1, "auto", ()),
    ("history", 2, "auto", ()),
]
ML100K_CONFIGS = [
    ("full", 1, "auto", ()),
    ("full", 2, "auto", ()),
    ("full", 2, "auto", ("--strategy", "deepspeed", "--zero-stage", "2")),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", required=True, help="checkout of the code to compare against")
    ap.add_argument("--new-tree", default=str(results.ROOT), help="checkout of the new code (default: this one)")
    ap.add_argument("--users", nargs="*", type=int, default=[10_000, 100_000])
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps per epoch of the synthetic sizes")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--ml100k-epochs", type=int, default=3)
    ap.add_argument("--configs", nargs="*", default=[],
                    help="only these configurations, as MODE:WORKERS:GRAD_SYNC:STRATEGY (e.g. full:2:auto:ddp)")
    ap.add_argument("--tag", default="", help="suffix of the output names: results/core-speed-TAG.json, its RESULTS.md section")
    ap.add_argument("--runs", default=str(results.RUNS / "core_speed"))
    ap.add_argument("--replot", action="store_true", help="train nothing: redraw the PNG of results/core-speed[-TAG].json")
    args = ap.parse_args()
    if args.replot:
        name = "core-speed" + (f"-{args.tag}" if args.tag else "")
        plot(results.read_results(name)["rows"], name)
        return 0
    runs = Path(args.runs)
    trees = {"old": {"PYTHONPATH": str(Path(args.old_tree).resolve())}, "new": {"PYTHONPATH": str(Path(args.new_tree).resolve())}}

    from slifmr.data.ml100k import prepare_ml100k

    jobs: list[tuple[str, Path, int, tuple, int, int]] = []  # (name, data, train pairs, config, steps, epochs)
    ml100k = prepare_ml100k()
    jobs += [("ml-100k", ml100k, 0, c, 0, args.ml100k_epochs) for c in ML100K_CONFIGS]
    for users in args.users:
        path, n_train = dataset(users, runs / "data")
        jobs += [(f"{users:,} users", path, n_train, c, args.steps, 2) for c in CONFIGS]

    rows: list[dict[str, Any]] = []
    for name, data, n_train, (mode, workers, sync, extra), steps, epochs in jobs:
        row: dict[str, Any] = {"data": name, "mode": mode, "workers": workers, "grad_sync": sync,
                               "strategy": "deepspeed" if "deepspeed" in extra else "ddp", "threads": 1}
        if args.configs and f"{mode}:{workers}:{sync}:{row['strategy']}" not in args.configs:
            continue
        for tree, env in trees.items():
            slug = f"{name.split()[0].replace(',', '')}-{mode}-w{workers}-{sync}-{row['strategy']}-{tree}"
            m = measure(data, n_train, mode, workers, sync, steps, runs / slug, args.batch if steps else 2048,
                        epochs=epochs, extra=extra, env=env)
            if m.get("error"):
                print(m["error"], file=sys.stderr)
                return 1
            row[tree] = {k: m[k] for k in ("seconds_per_step", "interactions_per_second", "outside_steps_seconds",
                                           "fusion_seconds", "grad_bytes_per_step", "peak_rss_gb", "command")}
        row["ratio_seconds_per_step"] = row["new"]["seconds_per_step"] / row["old"]["seconds_per_step"]
        row["ratio_outside_steps"] = row["new"]["outside_steps_seconds"] / row["old"]["outside_steps_seconds"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in trees}), flush=True)
        write(args, rows)
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    command = results.this_command()
    name = "core-speed" + (f"-{args.tag}" if args.tag else "")
    results.write_results(name, {"rows": rows}, note="local Ray, gloo, one torch thread per worker")
    plot(rows, name)
    lines = [
        "### Training speed, old and new code side by side" + (f" ({args.tag})" if args.tag else ""), "",
        f"Command: `{command}`  ",
        "Machine: x86_64, 2 cores, local Ray, gloo, one torch thread per worker. Each configuration ran with the old "
        "code and then the new, one after the other; the last epoch measured (it includes a fusion). ml-100k: whole epochs, "
        f"global batch 2048, {args.ml100k_epochs} epochs; synthetic sizes: {args.steps} steps of global batch "
        f"{args.batch}, as benchmarks/scale/scale.py.", "",
        "| data | mode | workers | strategy | grad sync | old s/step | new s/step | new / old | old outside-steps s "
        "| new outside-steps s | new / old |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['mode']} | {r['workers']} | {r['strategy']} | {r['grad_sync']} "
            f"| {r['old']['seconds_per_step']:.3f} | {r['new']['seconds_per_step']:.3f} | {r['ratio_seconds_per_step']:.2f} "
            f"| {r['old']['outside_steps_seconds']:.2f} | {r['new']['outside_steps_seconds']:.2f} "
            f"| {r['ratio_outside_steps']:.2f} |")
    lines += ["", f"![core speed](results/{name}.png)"]
    results.write_section("CORE_SPEED" + (f"_{args.tag.upper()}" if args.tag else ""), "\n".join(lines))


def plot(rows: list[dict[str, Any]], name: str) -> None:
    """Bars of new / old per configuration (seconds per step, seconds outside the steps), with
    the 1.10 bar (no slowdown beyond 10%): results/NAME.png."""
    import numpy as np

    plt = results.pyplot()
    labels = [f"{r['data']}\n{r['mode']} w{r['workers']} {r['grad_sync']}" + (" ZeRO" if r["strategy"] == "deepspeed" else "")
              for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    ax.bar(x - 0.2, [r["ratio_seconds_per_step"] for r in rows], 0.4, label="s/step, new / old")
    ax.bar(x + 0.2, [r["ratio_outside_steps"] for r in rows], 0.4, label="outside the steps, new / old")
    ax.axhline(1.10, color="red", linestyle="--", linewidth=1, label="1.10: the bar")
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_title("old and new code side by side, one run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    results.save_figure(fig, name, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
