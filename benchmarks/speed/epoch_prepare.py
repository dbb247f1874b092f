"""What a sampled-mode epoch costs before its first step: the epoch's graphs (`epoch_graphs`, with
S(t) fused), the sampler's HeteroData (`to_hetero_data`) and its CSC (`BatchSubgraphs`, as
`NeighborBatches.begin_epoch` builds them), on a real dataset folder, one torch thread. Run it
in each checkout (the measuring part imports slifmr only, so the old checkout's slifmr is the one
measured), then compare from this one:

    python -m benchmarks.speed.epoch_prepare --data DATA --out /tmp/prep-new.json
    (cd /path/to/old/checkout && python -c "import runpy, sys; sys.argv[1:] = ['--data', 'DATA', '--out', '/tmp/prep-old.json']; runpy.run_path('/path/to/this/checkout/benchmarks/speed/epoch_prepare.py', run_name='__main__')")
    python -m benchmarks.speed.epoch_prepare --compare /tmp/prep-old.json /tmp/prep-new.json --old-label 'commit X'

S(t) is drawn at random (k_corr neighbours per item, seeded) and KG(t)'s attention weights are
random: the work's size is a real epoch's, its values do not matter here. The graphs are built on
the CPU (this machine has no GPU). Reports the median seconds of each part over --repeat epochs
and a checksum of the CSC (which must be equal up to the order of sources within a destination).
--compare writes results/epoch-prepare.json and the EPOCH_PREPARE block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def measure(data: str, repeat: int) -> dict:
    import torch

    from slifmr.config import ModelConfig
    from slifmr.data.format import read_dataset
    from slifmr.fanout import sampling_fanouts
    from slifmr.model.graphs import (
        KGAttention,
        StaticGraphs,
        correlation_from_neighbours,
        epoch_graphs,
    )
    from slifmr.sampling.neighbor import BatchSubgraphs, to_hetero_data

    torch.set_num_threads(1)
    ds = read_dataset(data)
    cfg = ModelConfig(ridge_weight=0.0)  # the head's solves are timed elsewhere (FUSION_SCALE)
    static = StaticGraphs.from_dataset(ds, cfg)
    n = ds.num_items
    g = torch.Generator().manual_seed(0)
    corr = correlation_from_neighbours(torch.randint(0, n, (n, cfg.k_corr), generator=g),
                                       torch.rand(n, cfg.k_corr, generator=g))
    parts: dict[str, list[float]] = {"epoch_graphs": [], "to_hetero_data": [], "sampler": []}
    checksum = None
    for epoch in range(repeat):
        start = time.perf_counter()
        graphs = epoch_graphs(static, corr, cfg, torch.Generator().manual_seed(epoch))
        if graphs.kg is not None:
            weights = torch.rand(graphs.kg.heads.numel(), generator=g)
            graphs = graphs.with_attention(KGAttention.from_layout(graphs.kg.attention_layout(n), weights))
        parts["epoch_graphs"].append(time.perf_counter() - start)
        start = time.perf_counter()
        hetero = to_hetero_data(graphs)
        parts["to_hetero_data"].append(time.perf_counter() - start)
        fanouts = sampling_fanouts("history", "10,5", {"cf": cfg.ui_layers, "kg": cfg.kg_layers, "mm": cfg.mm_layers})
        start = time.perf_counter()
        sampler = BatchSubgraphs(hetero, {et: fanouts.get(et, [10]) for et in hetero.edge_types}, 0, 0,
                                 seed_sources_only=True).sampler
        parts["sampler"].append(time.perf_counter() - start)
        # per destination the same sources, whatever their order: sum of (destination, source) keys
        checksum = {sampler.to_edge_type[rel]: int((torch.repeat_interleave(
            torch.arange(ptr.numel() - 1), ptr.diff()) * 1_000_003 + sampler.row_dict[rel]).sum())
            for rel, ptr in sampler.colptr_dict.items()}
    seconds = {k: statistics.median(v) for k, v in parts.items()}
    return {"mode": "history", "data": data, "users": ds.num_users, "items": n, "edges": int(static.ui_edges.shape[1]),
            "workers": 1, "threads": 1, "repeat": repeat, "seconds": seconds, "runs_seconds": parts,
            "total_seconds": sum(seconds.values()), "csc_checksum": {"|".join(k): v for k, v in checksum.items()}}


def compare(old: Path, new: Path, label: str) -> None:
    from benchmarks.lib import results  # the comparing checkout's library (never imported by --out)

    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    command = results.this_command()
    lines = ["### A sampled-mode epoch before its first step, this checkout against an earlier one", "",
             f"Command: `{command}` (each --out written by its own checkout with `--data DATA --repeat "
             f"{b['repeat']}`; DATA: `{b.get('data', '?')}`)  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, one torch thread, CPU. Old: {label}. "
             f"Dataset: {b['users']:,} users, {b['items']:,} items, {b['edges']:,} training interactions; "
             "median seconds over the repeats.", "",
             "| part | old s | new s | new / old |", "|---|---|---|---|"]
    for part in b["seconds"]:
        lines.append(f"| {part} | {a['seconds'][part]:.2f} | {b['seconds'][part]:.2f} | "
                     f"{b['seconds'][part] / a['seconds'][part]:.2f} |")
    lines += [f"| total | {a['total_seconds']:.2f} | {b['total_seconds']:.2f} | "
              f"{b['total_seconds'] / a['total_seconds']:.2f} |", "",
              f"The sampler's CSC holds the same sources per destination: {a['csc_checksum'] == b['csc_checksum']}."]
    results.publish("EPOCH_PREPARE", "epoch-prepare", {"old": label, "rows": [a | {"code": "old"}, b | {"code": "new"}]},
                    lines, note="one torch thread, CPU")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a dataset folder (slifmr's format)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", type=Path, help="write this checkout's measurement here")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"), help="compare two --out files")
    p.add_argument("--old-label", default="an earlier checkout")
    args = p.parse_args()
    if args.compare:
        compare(*args.compare, args.old_label)
    elif args.out and args.data:
        result = json.dumps(measure(args.data, args.repeat))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result)
        print(result)
    else:
        p.error("give --data and --out (measure), or --compare OLD NEW")
    return 0


if __name__ == "__main__":
    sys.exit(main())
