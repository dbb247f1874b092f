"""Batch inference at scale (issue 17, part 2): every user's top K from an export, in one process
and on Ray Data actors, side by side in one run.

    python -m benchmarks.scale.inference_scale --users 1000000 --items 20000 --workers 2

The export is a synthetic slifmr one: a seeded synthetic dataset (~10 interactions per user),
random 64-d user and item embeddings and the ridge head solved on random 100-item
neighbourhoods, so the score is the full fused one (standardise(u.z) + eta standardise(x_u W)).
Rows: one process with 1 torch thread and with `workers` threads, and Ray Data with 1 and with
`workers` actors of one thread each (`slifmr.inference.recommend_all_ray`, the path of
`slifmr recommend --all --workers N`); each writes a folder of Parquet parts, one per batch.
Writes benchmarks/results/inference-scale.json and the INFERENCE_SCALE block of RESULTS.md.
`make_export` is the synthetic export benchmarks.serving.export_scorer serves too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.lib import results


def make_export(users: int, items: int, work: Path, exact_limit: int | None = None) -> Path:
    from slifmr.data.synth import synthesize
    from slifmr.export import export_representations
    from slifmr.model.graphs import StaticGraphs
    from slifmr.model.ridge import ridge_weights
    from slifmr.model.slifmr import Representations

    out = work / (f"export-{users}-{items}" + ("" if exact_limit is None else f"-exact{exact_limit}"))
    if (out / "manifest.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    ds = synthesize(users=users, items=items, interactions=10 * users, entities=0, triples=0, modalities=(), seed=0)
    from slifmr.config import ModelConfig

    static = StaticGraphs.from_dataset(ds, ModelConfig(use_kg=False, use_mm=False))
    g = torch.Generator().manual_seed(0)
    # clone: a slice keeps its whole permutation alive, N of them at once otherwise
    neighbours = torch.stack([torch.randperm(items - 1, generator=g)[:100].clone() for _ in range(items)])
    neighbours = neighbours + (neighbours >= torch.arange(items)[:, None]).long()  # never the item itself
    reps = Representations(torch.randn(users, 64, generator=g), torch.randn(items, 64, generator=g),
                           item_ridge=ridge_weights(static.ui_edges, users, items, neighbours, 200.0),
                           interactions=static.interactions, ridge_weight=0.5)
    about = {"variant": "synthetic (benchmarks/scale/inference_scale.py)"}
    if exact_limit is None:
        return export_representations(ds, reps, out, about)
    return export_representations(ds, reps, out, about, exact_limit=exact_limit)


def single_process(export: Path, out: Path, k: int, threads: int, batch: int = 4096) -> None:
    """The actors' work in this process: each batch scored and written as its own part."""
    from slifmr.inference import ExportRecommender

    out.mkdir(parents=True)
    torch.set_num_threads(threads)
    rec = ExportRecommender(str(export), k, str(out))
    torch.set_num_threads(threads)  # the actor class pins one thread: this process owns `threads` cores
    users = rec.export.users.shape[0]
    for start in range(0, users, batch):
        rec({"data": np.arange(start, min(start + batch, users))})


def _sorted_lists(folder: Path):  # noqa: ANN202
    import pyarrow.parquet as pq

    return pq.read_table(folder).sort_by([("user", "ascending"), ("rank", "ascending")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--work", default="/tmp/slifmr-inference-scale")
    ap.add_argument("--threaded", action="store_true", help="also one process with `workers` threads")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    export = make_export(args.users, args.items, work)
    print(f"export ready in {time.perf_counter() - t:.0f} s: {export}", flush=True)
    rows = []
    runs = [("one process", 1, 1)] + ([("one process", 1, args.workers)] if args.threaded else []) + \
        [("Ray Data actors", 1, 1), ("Ray Data actors", args.workers, 1)]
    reference = None
    for mode, workers, threads in runs:
        out = work / f"recs-{mode.split()[0].lower()}-{workers}x{threads}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        if mode == "one process":
            single_process(export, out, args.k, threads)
        else:
            import ray

            from slifmr.inference import recommend_all_ray

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
            started = time.perf_counter()
            recommend_all_ray(export, out, args.k, workers)
            ray.shutdown()
            start = started  # Ray's start-up (a few seconds, once per command) is reported apart
        seconds = time.perf_counter() - start
        lists = _sorted_lists(out)
        reference = reference if reference is not None else lists
        row = {"mode": mode, "users": args.users, "items": args.items, "k": args.k, "workers": workers,
               "threads": threads, "seconds": seconds, "users_per_second": args.users / seconds,
               "rows_written": lists.num_rows, "parts": len(list(out.iterdir())),
               "same_as_one_process": lists.column("item").equals(reference.column("item"))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, nothing else running"
    base = rows[0]["users_per_second"]
    one_actor = next(r["users_per_second"] for r in rows if r["mode"] != "one process")
    lines = ["### Batch inference at scale (issues 17 and 30)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. A synthetic export ({args.users:,} users, {args.items:,} items, 64-d, the ridge "
             f"head over 100 neighbours), top {args.k} of every user with seen items masked. Every mode scores "
             "batches of 4,096 users and writes each batch as its own Parquet part (Ray Data: the actor that "
             "scored it; the driver moves no rows); Ray Data's time excludes `ray.init`. 'same' compares the "
             "sorted lists with the first row's.", "",
             "| mode | workers | threads | seconds | users/s | vs one thread | vs one actor | parts | same |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['workers']} | {r['threads']} | {r['seconds']:.1f} | {r['users_per_second']:,.0f} | "
              f"{r['users_per_second'] / base:.2f}x | "
              + (f"{r['users_per_second'] / one_actor:.2f}x" if r["mode"] != "one process" else "-")
              + f" | {r['parts']} | {'yes' if r['same_as_one_process'] else 'NO'} |" for r in rows]
    results.publish("INFERENCE_SCALE", "inference-scale", {"rows": rows}, lines, note=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
