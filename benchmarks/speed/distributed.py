"""Data-parallel training on Ray Train: 1 vs 2 CPU workers on ml-100k (DDP across seeds,
DeepSpeed ZeRO-2 on the first seed), and the sharded all-gather + kNN step against a plain
matmul of the same size.

    python -m benchmarks.speed.distributed --epochs 30 --seeds 0 1 2 --strategies ddp deepspeed --knn-items 20000

Writes benchmarks/results/distributed.json and the DISTRIBUTED block of RESULTS.md:
- per run (workers, strategy, seed): validation Recall@20 at the best epoch, training interactions per second,
  the share of epoch time in collectives and in fusion, and the per-epoch time outside the
  loop (checkpoint write + Ray report, from the gaps between epoch start times);
- the sharded kNN (2 gloo processes: all-gather of Z, top-k of each block, gather of the
  neighbour blocks) against one process's (N/2 x d) @ (d x N) matmul;
- equivalence: mean and standard deviation of validation Recall@20 over the seeds, 1 vs 2
  workers, and the difference against the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.lib import results


def train_once(workers: int, epochs: int, seed: int, run_root: Path, strategy: str = "ddp") -> dict[str, Any]:
    from slifmr import log
    from slifmr.config import load_config
    from slifmr.data.format import TRAIN, read_dataset
    from slifmr.data.ml100k import prepare_ml100k
    from slifmr.launch import ray_train

    log.setup(level=30, progress=False)
    cfg = load_config(overrides=[f"train.epochs={epochs}", f"train.seed={seed}", "train.patience=1000",
                                 f"train.strategy={strategy}", "train.zero_stage=2"])
    cfg.data = str(prepare_ml100k())
    run = run_root / f"workers{workers}-{strategy}-seed{seed}"
    start = time.time()
    results = ray_train(cfg, run, workers=workers)
    wall = time.time() - start
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    n_train = int((read_dataset(cfg.data).split == TRAIN).sum())
    epoch_s = [r["epoch_seconds"] for r in records]
    starts = [r["epoch_start_unix_seconds"] for r in records]
    outside = [b - a - e for a, b, e in zip(starts, starts[1:], epoch_s)]
    return {
        "workers": workers, "strategy": strategy, "seed": seed, "epochs": len(records), "wall_seconds": wall,
        "best_epoch": results["best_epoch"], "valid_recall@20": results["valid"]["recall@20"],
        "seconds_per_epoch": statistics.mean(epoch_s),
        "interactions_per_second": n_train / statistics.mean(epoch_s),
        "comm_share": statistics.mean(r["comm_seconds"] / r["epoch_seconds"] for r in records),
        "fusion_share": statistics.mean(r["fusion_seconds"] / r["epoch_seconds"] for r in records),
        "outside_loop_seconds_per_epoch": statistics.median(outside) if outside else None,
        "startup_and_teardown_seconds": wall - (starts[-1] - starts[0]) - epoch_s[-1],
    }


def _knn_worker(rank: int, port: int, z: torch.Tensor, k: int, repeats: int, out: str) -> None:
    import torch.distributed as dist

    from slifmr.distributed.collectives import Comm
    from slifmr.distributed.knn import KnnSearch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    comm = Comm.current()
    search = KnnSearch(comm, "exact")
    n = z.shape[0]
    start, stop = comm.shard(n)
    block = z[start:stop].contiguous()
    times_knn, times_mm = [], []
    for _ in range(repeats):
        dist.barrier()
        t = time.perf_counter()
        search(z, k)
        times_knn.append(time.perf_counter() - t)
        dist.barrier()
        t = time.perf_counter()
        block @ z.T
        times_mm.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps({"knn": min(times_knn), "matmul": min(times_mm)}))
    dist.destroy_process_group()


def knn_vs_matmul(n: int, d: int, k: int, repeats: int) -> dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    z = torch.randn(n, d)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        mp.spawn(_knn_worker, args=(port, z, k, repeats, out), nprocs=2, join=True)
        t = json.loads(Path(out).read_text())
    return {"items": n, "dim": d, "k": k, "workers": 2, "knn_seconds": t["knn"], "matmul_seconds": t["matmul"],
            "ratio": t["knn"] / t["matmul"]}


def _default_batch() -> int:
    from slifmr.config import load_config

    return load_config().train.batch_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--strategies", nargs="+", default=["ddp"], help="deepspeed runs on >1 workers, first seed only")
    ap.add_argument("--knn-items", type=int, default=20000)
    ap.add_argument("--runs", default=str(results.RUNS / "distributed"))
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    plan = [(w, "ddp", seed) for seed in args.seeds for w in args.workers]
    if "deepspeed" in args.strategies:
        plan += [(w, "deepspeed", args.seeds[0]) for w in args.workers if w > 1]
    runs = []
    for w, strategy, seed in plan:
        runs.append(train_once(w, args.epochs, seed, Path(args.runs), strategy))
        print(json.dumps(runs[-1]), flush=True)
    equivalence = []
    for w in args.workers:
        vals = [r["valid_recall@20"] for r in runs if r["workers"] == w and r["strategy"] == "ddp"]
        equivalence.append({"workers": w, "seeds": args.seeds, "valid_recall@20_mean": statistics.mean(vals),
                            "valid_recall@20_std": statistics.stdev(vals) if len(vals) > 1 else 0.0})
    knn = knn_vs_matmul(args.knn_items, 64, 10, 3)
    print(json.dumps(knn), flush=True)
    command = results.this_command()
    note = "one torch thread per worker, local Ray, gloo"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {note}"
    results.write_results("distributed", {"training": runs, "equivalence": equivalence, "knn_vs_matmul": knn}, note=note)
    lines = ["| workers | strategy | seed | valid Recall@20 (best epoch) | interactions/s | s/epoch | comm share | fusion share | outside loop s/epoch | start-up + teardown s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['workers']} | {r['strategy']} | {r['seed']} | {r['valid_recall@20']:.4f} ({r['best_epoch']}) | {r['interactions_per_second']:,.0f} | "
                     f"{r['seconds_per_epoch']:.2f} | {r['comm_share']:.1%} | {r['fusion_share']:.1%} | "
                     f"{r['outside_loop_seconds_per_epoch']:.2f} | {r['startup_and_teardown_seconds']:.1f} |")
    body = (f"### Data-parallel training on Ray Train (issue 4)\n\nCommand: `{command}`  \nMachine: {machine}. "
            f"ml-100k, variant slifmr, {args.epochs} epochs each (no early stop), global batch "
            f"{_default_batch():,} split across "
            f"the workers; DeepSpeed runs ZeRO stage 2.\n\n" + "\n".join(lines)
            + "\n\nEquivalence (DDP, validation Recall@20 at the best epoch over seeds "
            + ", ".join(map(str, args.seeds)) + "): "
            + "; ".join(f"{e['workers']} worker(s) {e['valid_recall@20_mean']:.4f} ± {e['valid_recall@20_std']:.4f}"
                        for e in equivalence) + ".\n"
            + f"\n\nSharded kNN (all-gather of Z + top-{knn['k']} of each block + gather of the neighbour blocks, "
            f"{knn['workers']} gloo processes, {knn['items']:,} items x {knn['dim']}): {knn['knn_seconds']:.3f} s, against "
            f"{knn['matmul_seconds']:.3f} s for one process's ({knn['items'] // 2:,} x {knn['dim']}) @ ({knn['dim']} x {knn['items']:,}) "
            f"matmul: ratio {knn['ratio']:.2f} (best of 3).\n")
    results.write_section("DISTRIBUTED", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
