"""Accuracy of one-hop history sampling against full-graph training (issue 14).

    python -m benchmarks.quality.history_accuracy --users 100000 --epochs 3 \
        --ml100k benchmarks/runs/quality_history_gas --ml100k-reference benchmarks/runs/quality_v3

1. Synthetic set (benchmarks/scale/scale.py's generator, --users users): `slifmr train` with
   --sampling full and --sampling history, the same seed, batch, epochs and (exact) kNN,
   validation Recall@20 over every user after each epoch; the relative gap at equal epochs.
2. ml-100k (optional): test Recall@20 per seed of finished runs (`benchmarks.quality.quality
   --set train.sampling=history ... --runs DIR`) against the full-graph runs of the same seeds.

Writes benchmarks/results/history-accuracy[-TAG].json, its PNG and the HISTORY_ACCURACY[_TAG]
block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.lib import results
from benchmarks.scale.scale import dataset, run


def train(data: Path, mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One `slifmr train` run and its per-epoch validation; a finished run of the same command
    under `out` is read, not re-run (its row says so)."""
    extra = [x for kv in (args.history_set if mode == "history" else []) for x in ("--set", kv)]
    common = [x for kv in args.set for x in ("--set", kv)]
    cmd = [sys.executable, "-m", "slifmr", "train", "--data", str(data), "--out", str(out), "--epochs", str(args.epochs),
           "--sampling", mode, "--seed", str(args.seed), "--set", f"train.batch_size={args.batch}",
           "--set", "train.patience=100", "--set", f"train.threads={args.threads}", *common, *extra]
    command = " ".join(["slifmr", *cmd[3:]])
    done = out / "results.json"
    row_path = out.parent / f"{out.name}.row.json"
    if done.exists() and row_path.exists() and json.loads(row_path.read_text())["command"] == command:
        return {**json.loads(row_path.read_text()), "reused": True}
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rc, wall, peak = run(cmd, out.parent / f"{out.name}.log")
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}): see {out.parent / f'{out.name}.log'}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    row = {"mode": mode, "command": command, "wall_seconds": wall, "peak_rss_gb": peak / 1e9,
           "valid_recall@20": [r["valid"]["recall@20"] for r in records],
           "train_seconds": [r["train_seconds"] for r in records]}
    row_path.write_text(json.dumps(row))
    return row


def ml100k(runs: Path, reference: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(runs.glob("*/results.json")):
        ref = reference / path.parent.name / "results.json"
        if not ref.exists():
            continue
        mine, theirs = json.loads(path.read_text()), json.loads(ref.read_text())
        rows.append({"run": path.parent.name, "seed": mine["seed"], "history": mine["test"]["recall@20"],
                     "full": theirs["test"]["recall@20"], "history_ndcg": mine["test"]["ndcg@20"],
                     "full_ndcg": theirs["test"]["ndcg@20"], "history_best_epoch": mine["best_epoch"],
                     "full_best_epoch": theirs["best_epoch"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides (KEY=VALUE) for both modes")
    ap.add_argument("--history-set", nargs="*", default=[], help="config overrides for the history run only")
    ap.add_argument("--ml100k", type=Path, help="finished history-mode quality runs (benchmarks.quality.quality --runs)")
    ap.add_argument("--ml100k-reference", type=Path, default=results.RUNS / "quality_v3")
    ap.add_argument("--runs", type=Path, default=results.RUNS / "history_accuracy")
    ap.add_argument("--data-root", type=Path, default=results.RUNS / "scale" / "data",
                    help="where the synthetic set is cached (benchmarks.scale.scale's)")
    ap.add_argument("--tag", help="suffix of the outputs (results/history-accuracy-TAG.json, its PNG and "
                                  "RESULTS.md section) and of the history run's folder")
    args = ap.parse_args()

    data, n_train = dataset(args.users, args.data_root)
    suffix = f"-{args.tag}" if args.tag else ""
    synthetic = {mode: train(data, mode, args, args.runs / f"u{args.users}-{mode}{suffix if mode == 'history' else ''}")
                 for mode in ("full", "history")}
    doc = {"command": results.this_command(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
           "users": args.users, "train_interactions": n_train, "epochs": args.epochs, "batch_size": args.batch,
           "synthetic": synthetic, "ml100k": ml100k(args.ml100k, args.ml100k_reference) if args.ml100k else []}
    results.write_results(f"history-accuracy{suffix}", {k: v for k, v in doc.items() if k not in results.META},
                          note=doc["machine"])
    plot(doc, f"history-accuracy{suffix}")
    text = section(doc, suffix)
    results.write_section("HISTORY_ACCURACY" + suffix.upper().replace("-", "_"), text)
    print(text)
    return 0


def section(doc: dict[str, Any], suffix: str = "") -> str:
    full, hist = doc["synthetic"]["full"], doc["synthetic"]["history"]
    lines = ["| epoch | full: valid Recall@20 | history: valid Recall@20 | relative gap |", "|---|---|---|---|"]
    for e, (f, h) in enumerate(zip(full["valid_recall@20"], hist["valid_recall@20"]), start=1):
        lines.append(f"| {e} | {f:.4f} | {h:.4f} | {(h - f) / f:+.2%} |")
    speed = (f"Steps took {sum(full['train_seconds']):.0f} s (full) and {sum(hist['train_seconds']):.0f} s (history) "
             f"over {doc['epochs']} epochs.")
    body = (f"### History sampling{' (' + suffix[1:] + ')' if suffix else ''} against full-graph training (issue 14)\n\n"
            f"Command: `{doc['command']}`  \n"
            f"Machine: {doc['machine']}.\n\nSynthetic set, {doc['users']:,} users, {doc['train_interactions']:,} "
            f"training interactions, global batch {doc['batch_size']:,}, validation over every user "
            f"(`{full['command']}`; history: `{hist['command']}`):\n\n" + "\n".join(lines)
            + f"\n\n{speed}\n")
    if doc["ml100k"]:
        rows = doc["ml100k"]
        diff = np.array([r["history"] - r["full"] for r in rows])
        full_mean = float(np.mean([r["full"] for r in rows]))
        lines = ["| seed | full: test Recall@20 | history: test Recall@20 | full: NDCG@20 | history: NDCG@20 | "
                 "best epochs (full / history) |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['seed']} | {r['full']:.4f} | {r['history']:.4f} | {r['full_ndcg']:.4f} | "
                         f"{r['history_ndcg']:.4f} | {r['full_best_epoch']} / {r['history_best_epoch']} |")
        body += ("\nml-100k, the default slifmr, test Recall@20 at the best validation epoch, per seed:\n\n"
                 + "\n".join(lines) + f"\n\nMean difference (history - full): {diff.mean():+.4f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.4f} "
                 f"({diff.mean() / full_mean:+.2%} of full-graph training's {full_mean:.4f}).\n")
    return body + f"\n![history accuracy](results/history-accuracy{suffix}.png)\n"


def plot(doc: dict[str, Any], name: str) -> None:
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mode, style in (("full", "--s"), ("history", "-^")):
        values = doc["synthetic"][mode]["valid_recall@20"]
        ax.plot(range(1, len(values) + 1), values, style, label=mode)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid Recall@20")
    ax.set_title(f"synthetic, {doc['users']:,} users")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    results.save_figure(fig, name)


if __name__ == "__main__":
    raise SystemExit(main())
