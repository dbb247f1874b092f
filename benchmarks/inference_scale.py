"""Batch inference at scale (issue 17, part 2): every user's top K from an export, in one process
and on Ray Data actors, side by side in one run.

    python benchmarks/inference_scale.py --users 1000000 --items 20000 --workers 2

The export is a synthetic slifmr one: a seeded synthetic dataset (~10 interactions per user),
random 64-d user and item embeddings and the ridge head solved on random 100-item
neighbourhoods, so the score is the full fused one (standardise(u.z) + eta standardise(x_u W)).
Rows: one process with 1 torch thread, one process with `workers` threads, and Ray Data with
`workers` actors of one thread each (`slifmr.inference.recommend_all_ray`, the path of
`slifmr recommend --all --workers N`), each writing one Parquet file of top-20 lists.
Writes benchmarks/results/inference-scale.json and the INFERENCE_SCALE section of RESULTS.md.
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
from quality import publish


def make_export(users: int, items: int, work: Path) -> Path:
    from slifmr.data.synth import synthesize
    from slifmr.export import export_representations
    from slifmr.model.graphs import StaticGraphs
    from slifmr.model.ridge import ridge_weights
    from slifmr.model.slifmr import Representations

    out = work / f"export-{users}-{items}"
    if (out / "manifest.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    ds = synthesize(users=users, items=items, interactions=10 * users, entities=0, triples=0, modalities=(), seed=0)
    from slifmr.config import ModelConfig

    static = StaticGraphs.from_dataset(ds, ModelConfig(use_kg=False, use_mm=False))
    g = torch.Generator().manual_seed(0)
    neighbours = torch.stack([torch.randperm(items - 1, generator=g)[:100] for _ in range(items)])
    neighbours = neighbours + (neighbours >= torch.arange(items)[:, None]).long()  # never the item itself
    reps = Representations(torch.randn(users, 64, generator=g), torch.randn(items, 64, generator=g),
                           item_ridge=ridge_weights(static.ui_edges, users, items, neighbours, 200.0),
                           interactions=static.interactions, ridge_weight=0.5)
    return export_representations(ds, reps, out, {"variant": "synthetic (benchmarks/inference_scale.py)"})


def single_process(export: Path, out: Path, k: int, threads: int, batch: int = 4096) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slifmr.inference import ExportRecommender

    torch.set_num_threads(threads)
    rec = ExportRecommender(str(export), k)
    torch.set_num_threads(threads)  # the actor class pins one thread: this process owns `threads` cores
    users = rec.export.users.shape[0]
    with pq.ParquetWriter(out, pa.schema([("user", pa.string()), ("rank", pa.int64()), ("item", pa.string()),
                                          ("score", pa.float32())])) as writer:
        for start in range(0, users, batch):
            writer.write_table(pa.table(rec({"data": np.arange(start, min(start + batch, users))})))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--work", default="/tmp/slifmr-inference-scale")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    export = make_export(args.users, args.items, work)
    print(f"export ready in {time.perf_counter() - t:.0f} s: {export}", flush=True)
    rows = []
    for mode, threads in (("one process", 1), ("one process", args.workers), ("Ray Data actors", args.workers)):
        out = work / "recs.parquet"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        if mode == "one process":
            single_process(export, out, args.k, threads)
        else:
            import ray

            from slifmr.inference import recommend_all_ray

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
            started = time.perf_counter()
            recommend_all_ray(export, out, args.k, args.workers)
            ray.shutdown()
            start = started  # Ray's start-up (a few seconds, once per command) is reported apart
        seconds = time.perf_counter() - start
        import pyarrow.parquet as pq

        written = pq.ParquetFile(out).metadata.num_rows
        row = {"mode": mode, "users": args.users, "items": args.items, "k": args.k,
               "workers": args.workers if mode != "one process" else 1,
               "threads": threads, "seconds": seconds, "users_per_second": args.users / seconds, "rows_written": written}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = "python benchmarks/inference_scale.py " + " ".join(sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, nothing else running"
    base = rows[0]["users_per_second"]
    lines = ["## Batch inference at scale (issue 17)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. A synthetic export ({args.users:,} users, {args.items:,} items, 64-d, the ridge "
             f"head over 100 neighbours), top {args.k} of every user with seen items masked, one Parquet file; Ray "
             "Data's time excludes `ray.init`.", "",
             "| mode | workers | threads | seconds | users/s | vs one thread |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['workers']} | {r['threads']} | {r['seconds']:.1f} | {r['users_per_second']:,.0f} | "
              f"{r['users_per_second'] / base:.2f}x |" for r in rows]
    publish("INFERENCE_SCALE", "inference-scale", {"command": command, "machine": machine, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
