"""What a history-sampled batch touches, against graph size (issue 14's per-step target).

    python -m benchmarks.scale.sample_work --users 100000 1000000 --steps 7

For each size, on the synthetic datasets benchmarks.scale.scale writes (--data, `u<users>`
folders), the epoch-1 graphs of `slifmr` (history sampling, no ridge head) and --steps BPR
batches of --batch: per step, the distinct seed users and items, the sampled nodes per type
and the sampled edges, and the wall seconds of `BatchSubgraphs.sample` (PyG's sampler
interface, our vectorised `_sample`, the subgraph's weights; one warm-up pass first, 1 torch
thread), for the whole sample and the sample cut to its seeds. Nanoseconds per sampled edge
separate the two reasons a step grows with the graph: more distinct nodes in a batch of the
same size (fewer repeats among a larger catalogue) and dearer memory access per edge.
Writes benchmarks/results/sample-work.json and the SAMPLE_WORK block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.lib import results


def measure(data: Path, batch: int, steps: int) -> list[dict]:
    """One size's per-step work and sampler seconds (means over `steps` batches), for the whole
    one-hop sample (train.history_grad=sampled) and for the sample cut to its seeds
    (history_grad=seeds, the default: `BatchSubgraphs(seed_sources_only=True)`)."""
    import torch

    from slifmr.config import load_config
    from slifmr.data.graphs import training_pairs
    from slifmr.fanout import sampling_fanouts
    from slifmr.model.graphs import epoch_graphs
    from slifmr.ranking import resolve_dataset
    from slifmr.sampling.negative import BPRSampler
    from slifmr.sampling.neighbor import BatchSubgraphs, to_hetero_data
    from slifmr.training import build_model

    cfg = load_config(overrides=[f"data={data}", "model.ridge_weight=0", "train.sampling=history",
                                 f"train.batch_size={batch}"])
    ds = resolve_dataset(cfg)
    model, static = build_model(cfg, ds, sparse_tables=True)
    graphs = model.attend(epoch_graphs(static, None, cfg.model, torch.Generator().manual_seed(0)))
    graph, fanouts = to_hetero_data(graphs), sampling_fanouts(cfg.train.sampling, cfg.train.fanout, model.view_layers)
    batches = [b for _, b in zip(range(steps), BPRSampler(*training_pairs(ds), ds.num_items, batch, 1).epoch(1))]
    rows = []
    for history_grad in ("sampled", "seeds"):
        subgraphs = BatchSubgraphs(graph, fanouts, 0, 0, seed_sources_only=history_grad == "seeds")

        def run(subgraphs: BatchSubgraphs) -> list:
            return [subgraphs.sample(*b, 1, step) for step, b in enumerate(batches)]

        run(subgraphs)  # warm-up
        start = time.perf_counter()
        outs = run(subgraphs)
        seconds = (time.perf_counter() - start) / len(batches)
        kept = statistics.mean(sum(o[et].edge_index.shape[1] for et in o.edge_types) for o in outs)
        rows.append({"mode": "history", "history_grad": history_grad, "users": ds.num_users, "items": ds.num_items,
                     "workers": 1, "threads": 1, "batch_size": batch, "steps": len(batches),
                     "seed_users": statistics.mean(int(o["user"].num_sampled_nodes[0]) for o in outs),
                     "seed_items": statistics.mean(int(o["item"].num_sampled_nodes[0]) for o in outs),
                     "sampled_nodes": {t: statistics.mean(o[t].n_id.numel() for o in outs) for t in outs[0].node_types},
                     "sampled_edges": statistics.mean(sum(int(o[et].num_sampled_edges[0]) for et in o.edge_types)
                                                      for o in outs) if history_grad == "sampled" else rows[0]["sampled_edges"],
                     "kept_edges": kept, "sampler_seconds_per_step": seconds})
        rows[-1]["ns_per_sampled_edge"] = seconds / rows[-1]["sampled_edges"] * 1e9
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", nargs="+", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--data", default=str(results.RUNS / "scale14" / "data"), help="folder of u<users> datasets")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=7)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for users in args.users:
        data = Path(args.data) / f"u{users}"
        if not data.exists():
            print(f"{data} is missing: run benchmarks.scale.scale at {users} users first", file=sys.stderr)
            return 2
        rows.extend(measure(data, args.batch, args.steps))
        print(f"{users:,} users done", flush=True)
    base = {r['history_grad']: r for r in reversed(rows)}  # each mode's first size
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, nothing else running; 1 torch thread"
    lines = ["### What a history-sampled batch touches (issue 14)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. Synthetic datasets of benchmarks/scale/scale.py (items = users / 10); global batch "
             f"{args.batch:,}; means over {args.steps} batches of `BatchSubgraphs.sample` (the sampler, the "
             "subgraph's edge weights and indices: what a step's 'sampling' time holds before the propagator), "
             "for the whole sample (history_grad=sampled) and the sample cut to its seeds (history_grad=seeds, "
             "the default). Sampled edges: every drawn edge; kept: those in the subgraph.", "",
             "| users | items | history_grad | seed users | seed items | nodes users / items / entities | "
             "sampled edges | kept edges | sampler s/step | ns per sampled edge | s/step vs first size |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nodes = " / ".join(f"{r['sampled_nodes'].get(t, 0):,.0f}" for t in ("user", "item", "entity"))
        lines.append(f"| {r['users']:,} | {r['items']:,} | {r['history_grad']} | {r['seed_users']:,.0f} | "
                     f"{r['seed_items']:,.0f} | {nodes} | {r['sampled_edges']:,.0f} | {r['kept_edges']:,.0f} | "
                     f"{r['sampler_seconds_per_step']:.4f} | {r['ns_per_sampled_edge']:.0f} | "
                     f"{r['sampler_seconds_per_step'] / base[r['history_grad']]['sampler_seconds_per_step']:.2f}x |")
    results.publish("SAMPLE_WORK", "sample-work", {"rows": rows}, lines, note=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
