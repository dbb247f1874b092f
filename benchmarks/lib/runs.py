"""Training runs for the quality benchmarks: one (variant, seed) trained in-process by slifmr's
own loop, many of them on a process pool, and their summary (mean and std over seeds) as a
table and a bar chart."""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.lib import results

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def run_one(spec: str, seed: int, overrides: list[str], threads: int, run_root: str,
            data: str | None = None) -> dict[str, Any]:
    """Train one (variant, seed) on `data` (a dataset folder; None: the embedded ml-100k); `spec`
    is a variant, or VARIANT+PRESET (e.g. slifmr+scale: the variant under config preset PRESET),
    which names its run folder and its row."""
    from slifmr import log
    from slifmr.config import load_config
    from slifmr.data.ml100k import prepare_ml100k
    from slifmr.training import train_loop

    log.setup(level=30, progress=False)
    variant, _, preset = spec.partition("+")
    cfg = load_config(variant=variant, overrides=[*overrides, f"train.seed={seed}", f"train.threads={threads}"],
                      preset=preset or None)
    cfg.data = data or str(prepare_ml100k())
    return {**train_loop(cfg, Path(run_root) / f"{spec}-seed{seed}"), "variant": spec}


def train_all(jobs: list[tuple[str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """run_one for every (variant, seed), `args.parallel` at a time (args: set, threads, runs, data)."""
    runs = []
    with ProcessPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_one, v, s, args.set, args.threads, args.runs, args.data) for v, s in jobs]
        for (v, s), f in zip(jobs, futures):
            r = f.result()
            runs.append(r)
            print(f"{v} seed {s}: test recall@20 {r['test']['recall@20']:.4f} (best epoch {r['best_epoch']})", flush=True)
    return runs


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant, in the order the runs were asked for: seeds, (mean, std) of each test metric,
    mean validation Recall@20, best epoch, seconds per epoch and fusion seconds per epoch."""
    out: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == v]
        row: dict[str, Any] = {"seeds": len(rs)}
        for m in METRICS:
            vals = [r["test"][m] for r in rs]
            row[m] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        row["valid_recall@20"] = statistics.mean(r["valid"]["recall@20"] for r in rs)
        row["best_epoch"] = statistics.mean(r["best_epoch"] for r in rs)
        row["seconds_per_epoch"] = statistics.mean(r["seconds_per_epoch"] for r in rs)
        row["fusion_seconds"] = statistics.mean(r["fusion_seconds_per_epoch"] for r in rs)
        out[v] = row
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a markdown table."""
    head = ("| variant | seeds | test Recall@10 | test NDCG@10 | test Recall@20 | test NDCG@20 | valid Recall@20 "
            "| best epoch | s/epoch | fusion s/epoch |")
    lines = [head, "|---" * 10 + "|"]
    for v, r in summary.items():
        cells = [v, str(r["seeds"])] + [f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in METRICS]
        cells += [f"{r['valid_recall@20']:.4f}", f"{r['best_epoch']:.1f}", f"{r['seconds_per_epoch']:.2f}",
                  f"{r['fusion_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], name: str, title: str = "ml-100k, full ranking, mean ± std over seeds",
         bottom: float = 0.8, fontsize: float | None = None) -> Path:
    """Bars of test Recall@20 and NDCG@20 (mean, std) per row of `summary`, as results/NAME.png."""
    import numpy as np

    plt = results.pyplot()
    names = list(summary)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    for off, m in ((-0.2, "recall@20"), (0.2, "ndcg@20")):
        ax.bar(x + off, [summary[n][m][0] for n in names], 0.4, yerr=[summary[n][m][1] for n in names],
               label=f"test {m}", capsize=3)
    ax.set_xticks(x, names, fontsize=fontsize)
    ax.set_ylim(bottom=min(summary[n]["ndcg@20"][0] for n in names) * bottom)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return results.save_figure(fig, name, dpi=110)
