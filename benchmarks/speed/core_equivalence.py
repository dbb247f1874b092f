"""Numerics of the training loop, dumped so two versions of the code can be compared exactly.

Trains short runs of every code path the model core has (full graph, neighbor-sampled, every
view and switch, one and two gloo workers, DDP and row-sparse exchange) on a small synthetic
dataset and writes, per configuration, every epoch's losses and validation metrics, the test
metrics and a checksum of the best model's parameters. Run it once on each version (it imports
slifmr only, so the old checkout's slifmr is the one measured) and compare:

    python -m benchmarks.speed.core_equivalence --out /tmp/new.json
    (cd /path/to/old/checkout && python -c "import runpy, sys; sys.argv[1:] = ['--out', '/tmp/old.json']; runpy.run_path('/path/to/this/checkout/benchmarks/speed/core_equivalence.py', run_name='__main__')")
    python -m benchmarks.speed.core_equivalence --compare /tmp/old.json /tmp/new.json

The comparison prints the largest absolute difference of any number per configuration (exit 0:
every number equal). Nothing goes to benchmarks/results: the comparison is the result.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SMALL = ["model.embedding_dim=16", "model.k_corr=5", "model.k_mm=5", "train.epochs=4", "train.batch_size=512",
         "train.patience=100"]
SINGLE: dict[str, list[str]] = {
    "slifmr": [],
    "static": ["variant=static"],
    "lightgcn": ["variant=lightgcn"],
    "mf": ["variant=mf"],
    "freedom": ["variant=freedom"],
    "softmax_attention_user_aux": ["model.loss=softmax", "model.fusion=attention", "model.user_aux=true"],
    "transr_dropout_sc_cap": ["model.lambda_kg=0.1", "model.edge_dropout=0.3", "model.sc_max_items=20"],
    "refresh_binary": ["model.refresh_every=2", "model.corr_binary=true", "model.gamma=0.5", "model.beta=0.3"],
    "neighbor": ["train.sampling=neighbor", "train.fanout=4,2"],
    "neighbor_all": ["train.sampling=neighbor", "train.fanout=-1,-1"],
    "history": ["train.sampling=history", "train.fanout=4"],
    "history_sampled_refresh": ["train.sampling=history", "train.fanout=4", "train.history_grad=sampled",
                                "train.history_refresh=3"],
    "approx_knn": ["model.knn=approx"],
    "ease": ["variant=ease"],
    "cooc_ridge": ["variant=cooc_ridge"],
    "pop": ["variant=pop"],
    "ials": ["variant=ials"],
    "content_knn": ["variant=content_knn"],
}
GROUP: dict[str, list[str]] = {  # two gloo workers
    "ddp2": [],
    "ddp2_torch_ddp": ["train.grad_sync=ddp"],
    "ddp2_neighbor_sparse": ["train.sampling=neighbor", "train.fanout=4,2", "train.grad_sync=sparse"],
}


def dataset() -> Any:
    from slifmr.data.synth import synthesize

    return synthesize(users=300, items=200, interactions=6000, entities=300, triples=1200, seed=3)


def config(overrides: list[str]) -> Any:
    from slifmr.config import load_config

    variant = next((o.split("=", 1)[1] for o in overrides if o.startswith("variant=")), "slifmr")
    return load_config(variant=variant, overrides=SMALL + [o for o in overrides if not o.startswith("variant=")])


def _train_loop() -> Any:
    """The loop of whichever version is imported (slifmr.training since the loop's split)."""
    import slifmr

    if (Path(slifmr.__file__).parent / "trainer.py").exists():  # the checkout before the split
        from slifmr.trainer import train_loop
    else:
        from slifmr.training import train_loop
    return train_loop


def summarize(run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Every number a change of numerics would move."""
    from slifmr.distributed.checkpoint import load_checkpoint

    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln]
    state, _ = load_checkpoint(run_dir / "best")
    params = {k: float(v.double().abs().sum()) for k, v in sorted(state["model"].items())}
    return {
        "loss": [ln["loss"] for ln in lines],
        "valid": [ln["valid"] for ln in lines],
        "best_epoch": results["best_epoch"],
        "test": results["test"],
        "param_abs_sum": params,
    }


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from slifmr.distributed.collectives import Comm

    train_loop = _train_loop()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = dataset()
    summaries = {}
    for name, overrides in GROUP.items():
        run_dir = Path(out) / name
        results = train_loop(config(overrides + ["train.threads=1"]), run_dir, Comm.current(), ds=ds)
        if rank == 0:
            summaries[name] = summarize(run_dir, results)
    if rank == 0:
        (Path(out) / "group.json").write_text(json.dumps(summaries))
    dist.destroy_process_group()


def run_all(out: Path) -> None:
    from slifmr.distributed.collectives import Comm

    train_loop, ds = _train_loop(), dataset()
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SINGLE.items():
            run_dir = Path(tmp) / name
            results = train_loop(config(overrides + ["train.threads=1"]), run_dir, Comm(), ds=ds)
            summaries[name] = summarize(run_dir, results)
            print(f"{name}: test recall@20 {results['test']['recall@20']:.6f}", flush=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_worker, args=(2, port, tmp), nprocs=2, start_method="spawn")
        summaries.update(json.loads((Path(tmp) / "group.json").read_text()))
    out.write_text(json.dumps(summaries, indent=1))
    print(f"wrote {out}")


def _numbers(x: Any, path: str = "") -> dict[str, float]:
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in _numbers(val, f"{path}/{key}").items()}
    if isinstance(x, list):
        return {k: v for i, val in enumerate(x) for k, v in _numbers(val, f"{path}[{i}]").items()}
    return {path: float(x)} if isinstance(x, (int, float)) else {}


def compare(old_path: Path, new_path: Path) -> int:
    old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
    worst = 0.0
    for name in old:
        a, b = _numbers(old[name]), _numbers(new.get(name, {}))
        if set(a) != set(b):
            print(f"{name}: different keys: {sorted(set(a) ^ set(b))[:5]}")
            worst = float("inf")
            continue
        diff = max(abs(a[k] - b[k]) for k in a)
        key = max(a, key=lambda k: abs(a[k] - b[k]))
        print(f"{name:30s} max |old - new| {diff:.3g}" + (f" (at {key})" if diff else ""))
        worst = max(worst, diff)
    print(f"largest difference: {worst:.3g}")
    return 0 if worst == 0 else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the numbers of this checkout here")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("OLD", "NEW"))
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    run_all(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
