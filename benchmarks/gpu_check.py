"""The GPU path in one short script (run it where a CUDA device exists):

    python benchmarks/gpu_check.py --data ~/.cache/slifmr/ml-100k --epochs 5

1. `--gpu --workers 1` training on the dataset through Ray Train (nccl, world size 1), the
   same in-process on cuda:0, and in-process with `--sampling neighbor` and `--sampling
   history` (sparse table gradients and row-wise Adam on CUDA; history: one hop over the
   epoch's historical embeddings): interactions per second and validation Recall@20;
2. the CUDA exact kNN (chunked matmul + top-k, slifmr.data.graphs.knn) of 10^5 and 10^6
   random 64-d items, k = 10.

Writes benchmarks/results/gpu.json and the GPU section of RESULTS.md, with the card's name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from quality import RESULTS, write_results_md


def cuda_knn(n: int, d: int = 64, k: int = 10, chunk: int = 8192) -> dict[str, Any]:
    from slifmr.data.graphs import knn

    x = torch.randn(n, d, device="cuda")
    knn(x[:1000], k)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t = time.perf_counter()
    nbrs, _ = knn(x, k, chunk_size=chunk)
    torch.cuda.synchronize()
    return {"items": n, "dim": d, "k": k, "seconds": time.perf_counter() - t, "shape": list(nbrs.shape)}


def train(data: str, epochs: int, ray_workers: int, run_dir: Path, sampling: str = "full") -> dict[str, Any]:
    from slifmr.config import load_config
    from slifmr.data.format import TRAIN, read_dataset
    from slifmr.distributed.collectives import Comm
    from slifmr.distributed.launch import ray_train
    from slifmr.trainer import train_loop

    cfg = load_config(overrides=[f"train.epochs={epochs}", "train.patience=1000", f"train.sampling={sampling}"])
    cfg.data = data
    if ray_workers:
        results = ray_train(cfg, run_dir, workers=ray_workers, gpu=True)
    else:
        results = train_loop(cfg, run_dir, Comm.current("cuda"))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    n_train = int((read_dataset(data).split == TRAIN).sum())
    per_epoch = statistics.median(r["epoch_seconds"] for r in records)
    return {"ray_workers": ray_workers, "sampling": sampling, "epochs": len(records), "seconds_per_epoch": per_epoch,
            "interactions_per_second": n_train / per_epoch, "valid_recall@20": results["valid"]["recall@20"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared dataset folder (the GPU machine may be offline)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--knn-items", type=int, nargs="+", default=[100_000, 1_000_000])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    card = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory() as tmp:
        training = [train(args.data, args.epochs, w, Path(tmp) / f"w{w}") for w in (1, 0)]
        training.append(train(args.data, args.epochs, 0, Path(tmp) / "sampled", "neighbor"))
        training.append(train(args.data, args.epochs, 0, Path(tmp) / "history", "history"))
    knn = [cuda_knn(n) for n in args.knn_items]
    command = "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    out = {"command": command, "card": card, "torch": torch.__version__, "training": training, "knn": knn}
    print(json.dumps(out, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(out, indent=2))
    rows = "\n".join(f"| {'Ray Train, 1 worker, nccl' if t['ray_workers'] else 'in-process, cuda:0'}, {t['sampling']} | "
                     f"{t['interactions_per_second']:,.0f} | {t['seconds_per_epoch']:.2f} | {t['valid_recall@20']:.4f} |"
                     for t in training)
    knn_rows = "; ".join(f"{r['items']:,} items: {r['seconds']:.2f} s" for r in knn)
    write_results_md("GPU", f"## GPU path (issue 4)\n\nCommand: `{command}`  \nCard: {card}, torch {torch.__version__}.\n\n"
                            "| path | interactions/s | s/epoch | valid Recall@20 |\n|---|---|---|---|\n"
                            f"{rows}\n\nCUDA exact kNN (64-d, k = 10, chunked matmul + top-k): {knn_rows}.\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
