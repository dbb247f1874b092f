"""The self-loop's fusion at scale, ridge head on: its parts and its share of the epoch against
the catalogue, on Ray Train workers.

    python -m benchmarks.scale.fusion_scale --users 100000 300000 1000000 --workers 2 --whole-epoch 1000000

Each size is benchmarks/scale/scale.py's synthetic set (users U, items U/10, about 9.3 U training
interactions). Each configuration runs `slifmr train` (scale.measure: 2 epochs of --steps
history-sampled steps at global batch --batch, approximate kNN, 2,000 validation users) with
the ridge head on (model.ridge_weight 0.5, model.ridge_k --ridge-k, the blend chosen on
validation). Epoch 2 is a fusion: Z(1) -> kNN (k = ridge_k) -> S(2) and the head's solves (each
worker its block of items, one all-gather) -> the epoch graphs. Reported from its
metrics.jsonl line: kNN, ridge and the rest of the fusion (graph builds and KG attention), the
estimated whole epoch (seconds per step x the steps of a full pass + everything outside the
steps, the fusion included) and the fusion's share of it; the fitted exponent of fusion seconds
against items. --whole-epoch U trains 2 uncapped epochs at U users: epoch 2 measured whole.

Writes benchmarks/results/fusion-scale[-TAG].json, its PNG and the FUSION_SCALE[_TAG] block of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.lib import results
from benchmarks.scale.scale import dataset, measure


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", nargs="+", type=int, default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--workers", nargs="+", type=int, default=[2])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32768)
    ap.add_argument("--ridge-k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs", default=str(results.RUNS / "scale"))
    ap.add_argument("--whole-epoch", type=int, help="also train 2 uncapped epochs at this many users on the first "
                    "--workers count: epoch 2's measured seconds and its fusion's share")
    ap.add_argument("--rows", help="JSON lines this script printed before: those sizes are read, not re-run")
    ap.add_argument("--tag", default="", help="suffix of the outputs (results/fusion-scale-TAG.json, its section)")
    args = ap.parse_args()
    runs = Path(args.runs)
    extra = ("--set", "model.ridge_weight=0.5", "--set", f"model.ridge_k={args.ridge_k}",
             *(x for kv in args.set for x in ("--set", kv)))
    earlier = {}
    for line in Path(args.rows).read_text().splitlines() if args.rows else []:
        if line.startswith("{"):
            r = json.loads(line)
            earlier[(r["users"], r["workers"], r["steps"] if r["epoch_seconds_measured"] is None else 0)] = r
    rows: list[dict[str, Any]] = []
    sizes = [(u, w, args.steps) for u in args.users for w in args.workers]
    sizes += [(args.whole_epoch, args.workers[0], 0)] if args.whole_epoch else []
    for users, workers, steps in sizes:
        row = earlier.get((users, workers, steps))
        if row is None:
            data, n_train = dataset(users, runs / "data")
            row = measure(data, n_train, "history", workers, "auto", steps,
                          runs / f"fusion-u{users}-w{workers}-k{args.ridge_k}{'' if steps else '-whole'}", args.batch,
                          threads=args.threads, extra=extra)
            row.update({"users": users, "items": users // 10})
            if row["exit_status"] == 0:
                row["graph_seconds"] = row["fusion_seconds"] - row["knn_seconds"] - row["ridge_seconds"]
                epoch = row["epoch_seconds_measured"] or row["epoch_seconds_estimated"]
                row["fusion_share"] = row["fusion_seconds"] / epoch
            print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
        rows.append(row)
        print(write(args, rows))
    return 0


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    fits = {}
    for workers in args.workers:
        pts = [(r["items"], r["fusion_seconds"]) for r in rows
               if r["workers"] == workers and r["exit_status"] == 0 and r["epoch_seconds_measured"] is None]
        if len(pts) >= 2:
            fits[f"w{workers}"] = float(np.polyfit(np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts]), 1)[0])
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, local Ray, gloo"
    doc = {"batch_size": args.batch, "steps_per_run": args.steps, "runs": rows, "fitted_exponent": fits}
    name = "fusion-scale" + (f"-{args.tag}" if args.tag else "")
    results.write_results(name, doc, note=machine)
    plot(rows, name)
    lines = [f"### The self-loop's fusion at scale, ridge head on{f' ({args.tag})' if args.tag else ''}", "",
             f"Command: `{command}`  ", f"Machine: {machine}; each worker {args.threads} torch thread(s). "
             "Epoch 2 of a history-sampled run (global batch "
             f"{args.batch:,}, {args.steps} steps measured): its fusion (kNN + the head's solves + graph builds) "
             "and the estimated whole epoch it belongs to.", "",
             "| users | items | train interactions | workers | ridge_k | kNN s | kNN recall | ridge s | graphs s | "
             "fusion s | epoch s | fusion share | interactions/s | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["exit_status"] != 0:
            lines.append(f"| {r['users']:,} | {r['items']:,} | {r['train_interactions']:,} | {r['workers']} | | "
                         f"failed (exit {r['exit_status']}) |" + " |" * 8)
            continue
        lines.append(f"| {r['users']:,} | {r['items']:,} | {r['train_interactions']:,} | {r['workers']} | {r['ridge_k']} | "
                     f"{r['knn_seconds']:.1f} | {r['knn_recall']:.3f} | {r['ridge_seconds']:.1f} | {r['graph_seconds']:.1f} | "
                     f"{r['fusion_seconds']:.1f} | {epoch_cell(r)} | {100 * r['fusion_share']:.1f}% | "
                     f"{r['interactions_per_second']:,.0f} | {r['peak_rss_gb']:.1f} |")
    lines += ["", "Fitted exponent of fusion seconds against items: "
              + (", ".join(f"{k}: {v:.2f}" for k, v in fits.items()) or "(needs two sizes)") + ".", "",
              f"![fusion at scale](results/{name}.png)"]
    body = "\n".join(lines)
    results.write_section("FUSION_SCALE" + (f"_{args.tag.upper()}" if args.tag else ""), body)
    return body


def epoch_cell(r: dict[str, Any]) -> str:
    if r["epoch_seconds_measured"] is not None:
        return f"{r['epoch_seconds_measured']:.0f} (whole epoch, measured)"
    return f"{r['epoch_seconds_estimated']:.0f} (est.)"


def plot(rows: list[dict[str, Any]], name: str) -> None:
    plt = results.pyplot()
    ok = [r for r in rows if r["exit_status"] == 0 and r["epoch_seconds_measured"] is None]
    if not ok:
        return
    fig, (ax, share) = plt.subplots(1, 2, figsize=(10, 4))
    for workers in sorted({r["workers"] for r in ok}):
        pts = sorted((r for r in ok if r["workers"] == workers), key=lambda r: r["items"])
        items = [r["items"] for r in pts]
        for key, style in (("fusion_seconds", "o-"), ("knn_seconds", "s--"), ("ridge_seconds", "^--"),
                           ("graph_seconds", "v:")):
            ax.plot(items, [r[key] for r in pts], style, label=f"{key.split('_')[0]}, {workers} worker(s)")
        share.plot(items, [100 * r["fusion_share"] for r in pts], "o-", label=f"{workers} worker(s)")
    ax.set(xscale="log", yscale="log", xlabel="items", ylabel="seconds per fusion", title="fusion, ridge head on")
    share.axhline(15, color="grey", ls=":", label="15% target")
    share.set(xscale="log", xlabel="items", ylabel="% of the epoch", title="fusion share of the epoch")
    ax.legend(fontsize=7)
    share.legend(fontsize=7)
    fig.tight_layout()
    results.save_figure(fig, name)


if __name__ == "__main__":
    raise SystemExit(main())
