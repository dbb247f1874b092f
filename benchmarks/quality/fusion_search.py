"""A small one-seed search over SLIF-MR settings on ml-100k, chosen by VALIDATION Recall@20.

    python -m benchmarks.quality.fusion_search --seed 0 --parallel 2 \
        --try "" --try "model.lambda_sc=0.01" --try "model.gamma=0.5,model.beta=0.8"

Each --try is a comma-separated list of config overrides applied on top of `--set` (and
`--variant`). Test metrics are computed by the training loop (it always reads test once at
the best epoch) but this script neither prints nor stores them: selection sees validation
only. Writes benchmarks/results/fusion_search[-TAG].json and its block of RESULTS.md. Until Ray
Tune sweeps exist (issue 6) this is the hand-run stand-in.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.lib import results
from benchmarks.lib.runs import run_one


def _one(variant: str, seed: int, overrides: list[str], threads: int, root: str, name: str) -> dict[str, Any]:
    r = run_one(variant, seed, overrides, threads, str(Path(root) / name))
    return {"valid": r["valid"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
            "seconds_per_epoch": r["seconds_per_epoch"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--try", dest="tries", action="append", required=True, help="overrides, comma-separated ('' = defaults)")
    ap.add_argument("--variant", default="slifmr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="override for every try")
    ap.add_argument("--runs", default=str(results.RUNS / "fusion_search"))
    ap.add_argument("--tag", default="", help="suffix of the outputs: results/fusion_search-TAG.json, its RESULTS.md section")
    ap.add_argument("--title", default="One-seed search of SLIF-MR settings, by validation only (issue 3)")
    args = ap.parse_args()

    start = time.time()
    tries = [[o.strip() for o in t.split(",") if o.strip()] for t in args.tries]
    names = [("_".join(o.replace("model.", "").replace("train.", "") for o in t) or "defaults").replace("/", "-") for t in tries]
    with ProcessPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(_one, args.variant, args.seed, [*args.set, *t], args.threads, args.runs, n)
                   for t, n in zip(tries, names)]
        rows = []
        for t, n, f in zip(tries, names, futures):
            r = f.result()
            rows.append({"overrides": t, **r})
            print(f"{n}: valid recall@20 {r['valid']['recall@20']:.4f} (best epoch {r['best_epoch']})", flush=True)
    rows.sort(key=lambda r: -r["valid"]["recall@20"])
    command = results.this_command()
    note = f"{args.threads} torch thread(s) per run, {args.parallel} in parallel"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {note}"
    payload = {"variant": args.variant, "seed": args.seed,
               "common_overrides": args.set, "wall_seconds": time.time() - start, "tries": rows}
    stem = f"fusion_search-{args.tag}" if args.tag else "fusion_search"
    results.write_results(stem, payload, note=note)
    lines = ["| overrides | valid Recall@20 | valid NDCG@20 | best epoch | s/epoch |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {', '.join(r['overrides']) or '(defaults)'} | {r['valid']['recall@20']:.4f} | "
                     f"{r['valid']['ndcg@20']:.4f} | {r['best_epoch']} | {r['seconds_per_epoch']:.2f} |")
    body = (f"### {args.title}\n\nCommand: `{command}`  \n"
            f"Machine: {machine}; wall time {payload['wall_seconds'] / 60:.1f} min. Variant `{args.variant}`, "
            f"seed {args.seed}, common overrides: {', '.join(args.set) or 'none'}.\n\n" + "\n".join(lines) + "\n")
    results.write_section(stem.upper().replace("-", "_"), body)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
