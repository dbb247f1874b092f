"""Quality of every variant on the embedded ml-100k (or --data), several seeds (the protocol of
docs/architecture.md §3: per-user random 8:1:1, full ranking, early stopping on validation).

    python -m benchmarks.quality.quality --seeds 0 1 2 --parallel 2

Trains each (variant, seed) with `slifmr`'s own training loop (in-process, `threads` torch
threads per run, `parallel` runs at a time; benchmarks/lib/runs.py), then writes
  benchmarks/results/quality[-TAG].json   per variant and seed: test and validation metrics,
                                          best epoch, seconds per epoch and in fusion; the summary
  benchmarks/results/quality[-TAG].png    bar chart of test Recall@20 / NDCG@20 (mean, std)
  benchmarks/RESULTS.md                   the table, block QUALITY[_TAG]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.lib import results
from benchmarks.lib.runs import plot, summarise, table, train_all

VARIANTS = ["mf", "lightgcn", "freedom", "ease", "static", "no_sc", "no_kg", "no_mm", "no_ridge", "slifmr"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=VARIANTS,
                    help="variants, or VARIANT+PRESET for a variant under a config preset (slifmr+scale)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--runs", default=str(results.RUNS / "quality"))
    ap.add_argument("--tag", default="", help="suffix of the output names: results/quality-TAG.json, its PNG, its RESULTS.md block")
    ap.add_argument("--data", default=None, help="a prepared dataset folder (default: the embedded ml-100k)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: summarise the finished runs (results.json) already under --runs")
    args = ap.parse_args()

    start, measured = time.time(), results.commit()  # the code the runs load: the commit at the start
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    if args.collect:
        # the folder name says which variant a run stands for (a folder may link to a run trained
        # under another name whose config is that variant's, e.g. no_ridge = slifmr before the head)
        found = [(v, Path(args.runs) / f"{v}-seed{s}" / "results.json") for v, s in jobs]
        runs = [{**json.loads(p.read_text()), "variant": v} for v, p in found if p.exists()]
        if not runs:
            sys.exit(f"error: no finished runs under {args.runs}")
    else:
        runs = train_all(jobs, args)
    summary = summarise(runs)
    command = results.this_command(drop=("--collect",))
    command_md = f"`{command}`"
    if args.collect:
        command_md += (f" (summarising the {len(runs)} finished runs under --runs; they were trained by the same "
                       "command without --collect, in one or more invocations)")
    note = f"torch threads per run {args.threads}, {args.parallel} runs in parallel"
    if args.collect:
        note += f"; summarised from the finished runs under {os.path.relpath(args.runs)}"
    wall = time.time() - start
    payload = {
        "wall_seconds": wall, "overrides": args.set,
        "runs": [{k: r.get(k) for k in ("variant", "seed", "dataset", "best_epoch", "epochs_run", "valid", "test",
                                        "seconds_per_epoch", "fusion_seconds_per_epoch", "head")} for r in runs],
        "summary": {v: {k: (list(x) if isinstance(x, tuple) else x) for k, x in row.items()} for v, row in summary.items()},
    }
    stem = f"quality-{args.tag}" if args.tag else "quality"
    results.write_results(stem, payload, note=note, command=command, measured=measured)
    plot(summary, stem)
    dataset = runs[0].get("dataset") or "ml-100k"
    title = f"Quality on {dataset} ({args.tag})" if args.tag else f"Quality on {dataset}"
    body = (f"### {title}\n\nCommand: {command_md}  \nMachine: {platform.machine()}, {os.cpu_count()} cores, {note}; "
            f"commit {(measured['commit'] or '?')[:7]}; wall time {wall / 60:.1f} min.\n\n{table(summary)}\n\n"
            f"![quality](results/{stem}.png)\n")
    results.write_section(stem.upper().replace("-", "_"), body)
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
