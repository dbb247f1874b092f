"""What an ml-100k epoch costs, variant against variant (issue 15's cost target), measured side by
side in one run with nothing else on the machine.

    python -m benchmarks.speed.epoch_cost --variants lightgcn freedom slifmr --epochs 8
    python -m benchmarks.speed.epoch_cost --variants lightgcn slifmr lightgcn:train.batch_size=4096,train.lr=0.01

A variant may carry config overrides after a colon (comma-separated key=value, so a value
holding a comma, such as train.fanout, cannot be given this way). Each trains `--epochs` epochs with 1 torch thread, one after the other, through
`slifmr train`; the table gives the mean over epochs 2.. (epoch 1 has no fusion) of the epoch's
wall seconds and its parts (training steps, fusion: S(t), the epoch's graphs and the ridge head,
and validation), and the ratio to the first variant. --data trains on another dataset folder
than the embedded ml-100k. Writes benchmarks/results/epoch-cost.json and the EPOCH_COST block of
RESULTS.md.
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
from pathlib import Path

import yaml

from benchmarks.lib import results

PARTS = ("epoch_seconds", "train_seconds", "fusion_seconds", "eval_seconds")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["lightgcn", "freedom", "slifmr"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--work", default="/tmp/slifmr-epoch-cost")
    ap.add_argument("--data", help="a dataset folder (default: the embedded ml-100k)")
    args = ap.parse_args()
    rows = []
    for i, spec in enumerate(args.variants):
        variant, _, overrides = spec.partition(":")
        run = Path(args.work) / f"{i}-{variant}"
        shutil.rmtree(run, ignore_errors=True)
        sets = [a for kv in overrides.split(",") if kv for a in ("--set", kv)]
        subprocess.run([sys.executable, "-m", "slifmr", "-q", "train", "--variant", variant, "--epochs", str(args.epochs),
                        "--set", "train.threads=1", *sets, "--out", str(run),
                        *(["--data", args.data] if args.data else [])], check=True, capture_output=True)
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
        batch = yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"]
        rows.append({"mode": "full graph", "variant": spec, "workers": 1, "threads": 1, "batch_size": batch,
                     "epochs_averaged": len(recs), "steps_per_epoch": recs[0]["steps"],
                     **{k: statistics.mean(r[k] for r in recs) for k in PARTS}})
    base = rows[0]["epoch_seconds"]
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, nothing else running"
    lines = [f"### What {'an ml-100k' if not args.data else 'a ' + Path(args.data).name} epoch costs (issue 15)", "", f"Command: `{command}`  ",
             f"Machine: {machine}; 1 torch thread, one variant after the other; means over epochs 2-{args.epochs}.", "",
             "| variant | batch | steps | s/epoch | steps s | fusion s | validation s | vs " + rows[0]["variant"] + " |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['batch_size']:,} | {r['steps_per_epoch']} | {r['epoch_seconds']:.2f} | {r['train_seconds']:.2f} | {r['fusion_seconds']:.2f} | "
              f"{r['eval_seconds']:.2f} | {r['epoch_seconds'] / base:.2f}x |" for r in rows]
    results.publish("EPOCH_COST", "epoch-cost", {"rows": rows}, lines, note=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
