"""Many datasets, one table (issue 40): slifmr against the peers users pick, on datasets of
different shape, same protocol (per-user random 8:1:1, full ranking, train+valid masked).

    python -m benchmarks.quality.many --datasets planted sparse dense --seeds 0 1 2 --parallel 2 --threads 1

Datasets (built once under --data-root by `slifmr data synth --planted`, seeded):
  planted  4,000 users x 1,500 items, 150,000 interactions (3% dense)
  sparse   8,000 users x 4,000 items, 80,000 interactions (0.25% dense, 10 per user)
  dense    3,000 users x 200 items, 120,000 interactions (20% dense: a small catalogue)
  ml-100k, ml-1m  the public benchmarks (`slifmr data prepare`)
Variants: ease, cooc_ridge, ials (implicit's iALS), lightgcn, slifmr; the closed forms run once
(seed 0: they are deterministic given the split, iALS seeded). Writes
  benchmarks/results/quality-many.json   a row per (dataset, variant, seed)
  benchmarks/results/quality-many.png    test Recall@20 per dataset and variant
  benchmarks/RESULTS.md                  block QUALITY_MANY: slifmr / the best of ease and cooc_ridge
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.lib import results
from benchmarks.lib.runs import run_one

SYNTH = {"planted": ["--users", "4000", "--items", "1500", "--interactions", "150000"],
         "sparse": ["--users", "8000", "--items", "4000", "--interactions", "80000"],
         "dense": ["--users", "3000", "--items", "200", "--interactions", "120000", "--cluster-size", "20"]}
VARIANTS = ["ease", "cooc_ridge", "ials", "lightgcn", "slifmr"]
DETERMINISTIC = ("ease", "cooc_ridge", "ials")


def dataset_path(name: str, root: Path) -> str:
    if name in ("ml-100k", "ml-1m"):
        from slifmr.data.ml1m import prepare_ml1m
        from slifmr.data.ml100k import prepare_ml100k

        return str(prepare_ml1m() if name == "ml-1m" else prepare_ml100k())
    out = root / name
    if not (out / "meta.json").exists():
        subprocess.run([sys.executable, "-m", "slifmr", "data", "synth", "--planted", *SYNTH[name], "--seed", "0", "--out", str(out),
                        "--overwrite"], check=True, capture_output=True)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(SYNTH), choices=[*SYNTH, "ml-100k", "ml-1m"])
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default=str(results.RUNS / "many"))
    ap.add_argument("--data-root", default=str(results.RUNS / "many-data"))
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: summarise the finished runs (results.json) already under --runs")
    args = ap.parse_args()
    start, measured = time.time(), results.commit()  # the code the runs load: the commit at the start
    jobs = [(d, v, s) for d in args.datasets for v in args.variants for s in args.seeds
            if v not in DETERMINISTIC or s == args.seeds[0]]
    rows: list[dict[str, Any]] = []

    def keep(d: str, r: dict[str, Any]) -> None:
        rows.append({**{k: r.get(k) for k in ("variant", "seed", "best_epoch", "epochs_run", "valid", "test",
                                              "seconds_per_epoch", "fusion_seconds_per_epoch", "head")}, "dataset": d})

    if args.collect:  # the runs an interrupted invocation finished (their folders name them)
        for d, v, s in jobs:
            found = Path(args.runs) / d / f"{v}-seed{s}" / "results.json"
            if found.exists():
                keep(d, {**json.loads(found.read_text()), "variant": v})
    else:
        paths = {d: dataset_path(d, Path(args.data_root)) for d in args.datasets}
        with ProcessPoolExecutor(args.parallel) as pool:
            futures = [pool.submit(run_one, v, s, [], args.threads, str(Path(args.runs) / d), paths[d]) for d, v, s in jobs]
            for (d, v, s), f in zip(jobs, futures, strict=True):
                r = f.result()
                keep(d, r)
                print(f"{d} {v} seed {s}: test recall@20 {r['test']['recall@20']:.4f}", flush=True)
    command = results.this_command()
    note = f"torch threads per run {args.threads}, {args.parallel} runs in parallel"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {note}"
    payload: dict[str, Any] = {"wall_seconds": time.time() - start, "runs": rows}
    means = {(d, v): [r["test"]["recall@20"] for r in rows if r["dataset"] == d and r["variant"] == v]
             for d in args.datasets for v in args.variants}
    args.datasets = [d for d in args.datasets if all(means[(d, v)] for v in args.variants)]  # every variant run
    if args.collect:
        payload["note"] = (f"summarised from the finished runs under {os.path.relpath(args.runs)} (trained by the "
                           "same command without --collect); datasets without every variant left out of the table")
    results.write_results("quality-many", payload, note=note, measured=measured)
    head = "| dataset | " + " | ".join(args.variants) + " | slifmr / best of ease, cooc_ridge |"
    lines = [head, "|---" * (len(args.variants) + 2) + "|"]
    for d in args.datasets:
        cells = []
        for v in args.variants:
            xs = means[(d, v)]
            sd = f" ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else ""
            cells.append(f"{statistics.mean(xs):.4f}{sd}")
        ratio = statistics.mean(means[(d, "slifmr")]) / max(statistics.mean(means[(d, v)]) for v in ("ease", "cooc_ridge"))
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {ratio:.3f}x |")
    plot(means, args.datasets, args.variants)
    body = (f"### Many datasets, one table\n\nCommand: `{command}`  \nMachine: {machine}; commit {(measured['commit'] or '?')[:7]}; "
            f"wall time {payload['wall_seconds'] / 60:.1f} min. Test Recall@20, mean ± std over seeds (closed forms: "
            "one run).\n\n" + "\n".join(lines) + "\n\n![many datasets](results/quality-many.png)\n")
    results.write_section("QUALITY_MANY", body)
    print("\n".join(lines))
    return 0


def plot(means: dict[tuple[str, str], list[float]], datasets: list[str], variants: list[str]) -> None:
    import numpy as np

    plt = results.pyplot()

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        ax.bar(np.arange(len(datasets)) + j * width, [statistics.mean(means[(d, v)]) for d in datasets], width, label=v)
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets)
    ax.set_ylabel("test Recall@20")
    ax.legend(fontsize=8)
    fig.tight_layout()
    results.save_figure(fig, "quality-many", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
