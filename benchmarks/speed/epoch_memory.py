"""A run's resident memory per epoch: the default slifmr on ml-100k, RSS read by a reporter after
each epoch (what found the leak of torch's CPU CSR x CSR product, pytorch/pytorch#109445:
slifmr/model/ridge.py's `csr_product`).

    python -m benchmarks.speed.epoch_memory --epochs 14
    python -m benchmarks.speed.epoch_memory --epochs 14 --torch-product   # torch's product, as before

Writes benchmarks/results/epoch-memory[-torch-product].json (a row per epoch: epoch, rss_mb, head).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.lib import results


def main() -> int:
    import psutil

    from slifmr import log
    from slifmr.config import load_config
    from slifmr.data.ml100k import prepare_ml100k
    from slifmr.training import train_loop

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--torch-product", action="store_true", help="the head's sparse products by torch.sparse.mm")
    args = ap.parse_args()
    if args.torch_product:
        import torch

        from slifmr.model import ridge
        from slifmr.training import ridge_head

        ridge.csr_product = ridge_head.csr_product = torch.sparse.mm
    log.setup(level=30, progress=False)
    cfg = load_config(overrides=[f"train.epochs={args.epochs}", f"train.threads={args.threads}", "train.patience=1000"])
    cfg.data = str(prepare_ml100k())
    proc, rows = psutil.Process(), []

    def reporter(rec: dict[str, Any], _: Path | None) -> None:
        rows.append({"epoch": rec["epoch"], "rss_mb": proc.memory_info().rss / 2**20, "head": rec.get("head")})
        print(f"epoch {rec['epoch']}: {rows[-1]['rss_mb']:.0f} MB", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        train_loop(cfg, Path(tmp) / "run", reporter=reporter)
    product = "torch.sparse.mm" if args.torch_product else "csr_product (scipy)"
    results.write_results("epoch-memory" + ("-torch-product" if args.torch_product else ""),
                          {"dataset": "ml-100k", "variant": "slifmr", "sparse_product": product, "rows": rows},
                          note=f"torch threads {args.threads}, one run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
