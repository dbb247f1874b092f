"""What one validation with the ridge head's blend grid costs at scale: the real code path
(`Evaluator.evaluate_candidates` over `Representations.blends`, as `choose_blend` calls it) on a
seeded synthetic catalogue, one torch thread. Run it in each checkout (the measuring part imports
slifmr only, so the old checkout's slifmr is the one measured), then compare from this one:

    python -m benchmarks.speed.validation_cost --out /tmp/val-new.json
    (cd /path/to/old/checkout && python -c "import runpy, sys; sys.argv[1:] = ['--out', '/tmp/val-old.json']; runpy.run_path('/path/to/this/checkout/benchmarks/speed/validation_cost.py', run_name='__main__')")
    python -m benchmarks.speed.validation_cost --compare /tmp/val-old.json /tmp/val-new.json --old-label 'commit X'

Input: --users users (the validation sample) with 10 training and 1 validation item each,
--items items, d = 64 embeddings, W^T with ridge_k = 100 random entries per item, the default
blend grid (5 weights). Reports seconds per validation and the metrics (which must be equal).
--compare writes results/validation-cost.json and the VALIDATION_COST block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def measure(users: int, items: int, repeat: int) -> dict:
    import numpy as np
    import torch

    from slifmr.data.format import TRAIN, VALID, Dataset
    from slifmr.evaluation import Evaluator
    from slifmr.model.slifmr import Representations

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    per_user = 11
    user = np.repeat(np.arange(users), per_user)
    item = rng.integers(0, items, user.size)
    split = np.tile(np.r_[np.full(per_user - 1, TRAIN), VALID], users).astype(np.int8)
    ds = Dataset(name="synthetic", num_users=users, num_items=items, user=user, item=item, split=split)
    train = split == TRAIN
    x = torch.sparse_coo_tensor(torch.from_numpy(np.stack([user[train], item[train]])),
                                torch.ones(int(train.sum())), (users, items)).coalesce()
    k = 100
    w = torch.sparse_coo_tensor(torch.stack([torch.arange(items).repeat_interleave(k), torch.randint(0, items, (items * k,))]),
                                torch.randn(items * k), (items, items)).coalesce().to_sparse_csr()
    reps = Representations(torch.randn(users, 64), torch.randn(items, 64), item_ridge=w, interactions=x, ridge_weight=0.5)
    weights = [0.0, 0.25, 0.5, 1.0, 2.0]
    evaluator = Evaluator(ds, [10, 20], 1024)
    runs, results = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        results = evaluator.evaluate_candidates(lambda u: reps.blends(u, weights), len(weights), VALID)
        runs.append(time.perf_counter() - start)
    return {"mode": "validation", "users": users, "items": items, "blend_weights": len(weights), "threads": 1,
            "workers": 1, "seconds": float(np.median(runs)), "runs_seconds": runs,
            "recall@20": [r["recall@20"] for r in results], "ndcg@20": [r["ndcg@20"] for r in results]}


def compare(old: Path, new: Path, label: str) -> None:
    from benchmarks.lib import results  # the comparing checkout's library (never imported by --out)

    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    command = results.this_command()
    lines = ["### One validation with the blend grid, this checkout against an earlier one", "",
             f"Command: `{command}` (each --out written by its own checkout with `--users {b['users']} --items "
             f"{b['items']} --repeat {len(b['runs_seconds'])}`)  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, one torch thread. Old: {label}. "
             "`Evaluator.evaluate_candidates` over `Representations.blends` (5 weights), as `choose_blend` "
             "calls it; median of the repeats.", "",
             "| users | items | old s | new s | new / old | metrics equal |", "|---|---|---|---|---|---|",
             f"| {b['users']:,} | {b['items']:,} | {a['seconds']:.2f} | {b['seconds']:.2f} | "
             f"{b['seconds'] / a['seconds']:.2f} | {a['recall@20'] == b['recall@20'] and a['ndcg@20'] == b['ndcg@20']} |"]
    results.publish("VALIDATION_COST", "validation-cost", {"old": label, "rows": [a | {"code": "old"}, b | {"code": "new"}]},
                    lines, note="one torch thread")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, help="write this checkout's measurement here")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="compare two --out files")
    p.add_argument("--old-label", default="an earlier checkout")
    args = p.parse_args()
    if args.compare:
        compare(*args.compare, args.old_label)
    elif args.out:
        result = json.dumps(measure(args.users, args.items, args.repeat))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result)
        print(result)
    else:
        p.error("give --out (measure) or --compare OLD NEW")
    return 0


if __name__ == "__main__":
    sys.exit(main())
