"""Quality of every variant on the embedded ml-100k, several seeds (DESIGN.md §3 protocol).

    python benchmarks/quality.py --seeds 0 1 2 --parallel 2

Trains each (variant, seed) with `slifmr`'s own training loop (in-process, `threads`
torch threads per run, `parallel` runs at a time), then writes
  benchmarks/results/quality.json   per variant and seed: test and validation metrics,
                                    best epoch, seconds per epoch, seconds in fusion
  benchmarks/results/quality.png    bar chart of test Recall@20 / NDCG@20 (mean, std)
  benchmarks/RESULTS.md             the table, between the QUALITY markers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VARIANTS = ["mf", "lightgcn", "freedom", "ease", "static", "no_sc", "no_kg", "no_mm", "no_ridge", "slifmr"]


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


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys(r["variant"] for r in runs):  # in the order the runs were asked for
        rs = [r for r in runs if r["variant"] == v]
        if not rs:
            continue
        row: dict[str, Any] = {"seeds": len(rs)}
        for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
            vals = [r["test"][m] for r in rs]
            row[m] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        row["valid_recall@20"] = statistics.mean(r["valid"]["recall@20"] for r in rs)
        row["best_epoch"] = statistics.mean(r["best_epoch"] for r in rs)
        row["seconds_per_epoch"] = statistics.mean(r["seconds_per_epoch"] for r in rs)
        row["fusion_seconds"] = statistics.mean(r["fusion_seconds_per_epoch"] for r in rs)
        out[v] = row
    return out


def table(summary: dict[str, dict[str, Any]]) -> str:
    head = "| variant | seeds | test Recall@10 | test NDCG@10 | test Recall@20 | test NDCG@20 | valid Recall@20 | best epoch | s/epoch | fusion s/epoch |"
    lines = [head, "|---" * 10 + "|"]
    for v, r in summary.items():
        cells = [v, str(r["seeds"])] + [f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")]
        cells += [f"{r['valid_recall@20']:.4f}", f"{r['best_epoch']:.1f}", f"{r['seconds_per_epoch']:.2f}", f"{r['fusion_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], out: Path, title: str = "ml-100k, full ranking, mean ± std over seeds",
         bottom: float = 0.8, fontsize: float | None = None) -> None:
    """Bars of test Recall@20 and NDCG@20 (mean, std) per row of `summary`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(summary)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    for off, m in ((-0.2, "recall@20"), (0.2, "ndcg@20")):
        ax.bar(x + off, [summary[n][m][0] for n in names], 0.4, yerr=[summary[n][m][1] for n in names], label=f"test {m}", capsize=3)
    ax.set_xticks(x, names, fontsize=fontsize)
    ax.set_ylim(bottom=min(summary[n]["ndcg@20"][0] for n in names) * bottom)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def commit() -> str:
    """The checked-out commit the numbers were measured on (with '+changes' when the tree differs)."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--", "../slifmr") else "")


def publish(section: str, name: str, payload: dict[str, Any], lines: list[str]) -> None:
    """A benchmark's outputs: results/NAME.json (atomically), the SECTION of RESULTS.md, stdout."""
    from slifmr.atomic import write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / f"{name}.json", json.dumps(payload, indent=2))
    write_results_md(section, "\n".join(lines))
    print("\n".join(lines))


def old_against_new(parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace], Any],
                    compare: Callable[[Path, Path, str], object], echo: bool = True) -> None:
    """The command line of a benchmark run once in each checkout and then compared (each script's
    docstring gives the commands): `--out FILE` writes measure(args), a JSON-able result, there
    (and prints it with `echo`); `--compare OLD NEW [--old-label L]` calls compare(OLD, NEW, L)."""
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument("--old-label", default="an earlier checkout")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare, args.old_label)
        return
    result = json.dumps(measure(args))
    args.out.write_text(result)
    if echo:
        print(result)


def write_results_md(section: str, body: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = f"<!-- {section} START -->", f"<!-- {section} END -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def train_all(jobs: list[tuple[str, int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    with ProcessPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_one, v, s, args.set, args.threads, args.runs, args.data) for v, s in jobs]
        for (v, s), f in zip(jobs, futures):
            r = f.result()
            runs.append(r)
            print(f"{v} seed {s}: test recall@20 {r['test']['recall@20']:.4f} (best epoch {r['best_epoch']})", flush=True)
    return runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=VARIANTS,
                    help="variants, or VARIANT+PRESET for a variant under a config preset (slifmr+scale)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--runs", default=str(HERE / "runs" / "quality"))
    ap.add_argument("--tag", default="", help="suffix of the output names: results/quality-TAG.json, its PNG, its RESULTS.md section")
    ap.add_argument("--data", default=None, help="a prepared dataset folder (default: the embedded ml-100k)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: summarise the finished runs (results.json) already under --runs")
    args = ap.parse_args()

    start, measured = time.time(), commit()  # the code the runs load: the commit at the start
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
    argv = [a for a in sys.argv[1:] if a != "--collect"]
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *argv])
    command_md = f"`{command}`"
    if args.collect:
        command_md += (f" (summarising the {len(runs)} finished runs under --runs; they were trained by the same "
                       "command without --collect, in one or more invocations)")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads per run {args.threads}, {args.parallel} runs in parallel"
    if args.collect:
        machine += f"; summarised from the finished runs under {os.path.relpath(args.runs)}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command, "machine": machine, "commit": measured, "wall_seconds": time.time() - start,
        "overrides": args.set,
        "runs": [{k: r.get(k) for k in ("variant", "seed", "dataset", "best_epoch", "epochs_run", "valid", "test",
                                        "seconds_per_epoch", "fusion_seconds_per_epoch", "head")} for r in runs],
        "summary": {v: {k: (list(x) if isinstance(x, tuple) else x) for k, x in row.items()} for v, row in summary.items()},
    }
    stem = f"quality-{args.tag}" if args.tag else "quality"
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    plot(summary, RESULTS / f"{stem}.png")
    dataset = runs[0].get("dataset") or "ml-100k"
    title = f"Quality on {dataset} ({args.tag})" if args.tag else f"Quality on {dataset}"
    body = (f"## {title}{'' if args.tag else ' (issue 3)'}\n\nCommand: {command_md}  \nMachine: {machine}; "
            f"wall time {payload['wall_seconds'] / 60:.1f} min.\n\n{table(summary)}\n\n![quality](results/{stem}.png)\n")
    write_results_md(stem.upper().replace("-", "_"), body)
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
