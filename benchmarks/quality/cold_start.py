"""Where content must win: the cold-start item protocol (docs/architecture.md §3; slifmr/data/cold.py).

    python -m benchmarks.quality.cold_start --datasets ml-100k ml-1m --seeds 0
    python -m benchmarks.quality.cold_start --reuse --runs DIR   # finished runs under DIR are read, not retrained

For each dataset a seeded 10% of the items is held out of training (`slifmr data hold-out`,
share 0.1, seed 0: their interactions go to valid/test), then every variant is trained on it by
slifmr's own loop and scored on the held-out items' test interactions alone ("cold") and on all
("test"). Peers: `pop`, `content_knn` (feature cosine to the history), `ease` (which cannot place
a cold item and says so), `freedom` (ml-100k only: at its learning rate it trains for hundreds
of epochs) and slifmr. Writes
  benchmarks/results/cold-start.json   a row per (dataset, variant, seed): cold and test metrics
  benchmarks/results/cold-start.png    cold Recall@20 per dataset and variant
  benchmarks/RESULTS.md                the table, block COLD_START
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.lib import results
from benchmarks.lib.runs import run_one

VARIANTS = {"ml-100k": ["pop", "content_knn", "ease", "freedom", "slifmr"], "ml-1m": ["pop", "content_knn", "ease", "slifmr"]}
SHARE, SPLIT_SEED = 0.1, 0


def cold_dataset(name: str, root: Path) -> str:
    """The held-out version of dataset `name` (built once under `root`)."""
    from slifmr.data.cold import hold_out_items
    from slifmr.data.format import read_dataset, write_dataset
    from slifmr.data.ml1m import prepare_ml1m
    from slifmr.data.ml100k import prepare_ml100k

    out = root / f"{name}-cold"
    if not (out / "meta.json").exists():
        ds = hold_out_items(read_dataset(prepare_ml1m() if name == "ml-1m" else prepare_ml100k()), SHARE, SPLIT_SEED)
        ds.name = f"{name}-cold"
        write_dataset(ds, out, overwrite=True)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default=str(results.RUNS / "cold"))
    ap.add_argument("--reuse", action="store_true",
                    help="read a run's results.json where RUNS/DATASET/VARIANT-seedS has finished, train the others")
    args = ap.parse_args()
    start, measured = time.time(), results.commit()  # the code the runs load: the commit at the start
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(1) as pool:
        for name in args.datasets:
            data = cold_dataset(name, Path(args.runs))
            for seed in args.seeds:
                for v in VARIANTS[name]:
                    done = Path(args.runs) / name / f"{v}-seed{seed}" / "results.json"
                    if args.reuse and done.exists():
                        r = {**json.loads(done.read_text()), "variant": v}
                    else:
                        r = pool.submit(run_one, v, seed, [], args.threads, str(Path(args.runs) / name), data).result()
                    row = {k: r.get(k) for k in ("variant", "seed", "best_epoch", "epochs_run", "valid", "test",
                                                 "cold", "cold_note", "cold_placement", "seconds_per_epoch", "head")}
                    rows.append({**row, "dataset": name})
                    cold = r.get("cold")
                    print(f"{name} {v} seed {seed}: cold recall@20 "
                          f"{cold['recall@20']:.4f}" if cold else f"{name} {v} seed {seed}: {r.get('cold_note')}",
                          f"| test recall@20 {r['test']['recall@20']:.4f}", flush=True)
    command = results.this_command()
    note = f"torch threads per run {args.threads}, one run at a time"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {note}"
    payload = {"wall_seconds": time.time() - start,
               "protocol": f"{SHARE:g} of the items held out of training (seed {SPLIT_SEED}), their interactions "
                           "split 50/50 between valid and test; cold = test metrics on their interactions alone",
               "runs": rows}
    results.write_results("cold-start", payload, note=note, measured=measured)
    lines = ["| dataset | variant | seeds | cold Recall@20 | cold NDCG@20 | test Recall@20 (all items) |", "|---|---|---|---|---|---|"]
    means: dict[tuple[str, str], float] = {}
    for name in args.datasets:
        for v in VARIANTS[name]:
            rs = [r for r in rows if r["dataset"] == name and r["variant"] == v]
            test = statistics.mean(r["test"]["recall@20"] for r in rs)
            if rs[0]["cold"] is None:
                lines.append(f"| {name} | {v} | {len(rs)} | cannot place cold items | | {test:.4f} |")
                continue
            rec = [r["cold"]["recall@20"] for r in rs]
            nd = [r["cold"]["ndcg@20"] for r in rs]
            means[(name, v)] = statistics.mean(rec)
            sd = statistics.stdev(rec) if len(rec) > 1 else 0.0
            lines.append(f"| {name} | {v} | {len(rs)} | {statistics.mean(rec):.4f} ± {sd:.4f} | {statistics.mean(nd):.4f} | {test:.4f} |")
    plot(means)
    body = (f"### Cold-start items: where content must win\n\nCommand: `{command}`  \nMachine: {machine}; commit "
            f"{(measured['commit'] or '?')[:7]}; wall time {payload['wall_seconds'] / 60:.1f} min.  \nProtocol: {payload['protocol']}.\n\n"
            + "\n".join(lines) + "\n\n![cold start](results/cold-start.png)\n")
    results.write_section("COLD_START", body)
    print("\n".join(lines))
    return 0


def plot(means: dict[tuple[str, str], float]) -> None:
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{d}\n{v}" for d, v in means]
    ax.bar(range(len(means)), list(means.values()))
    ax.set_xticks(range(len(means)), labels, fontsize=7)
    ax.set_ylabel("cold-item test Recall@20")
    ax.set_title("items held out of training: ranked by content alone")
    fig.tight_layout()
    results.save_figure(fig, "cold-start", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
