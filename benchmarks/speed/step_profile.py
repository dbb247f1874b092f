"""Where a full-graph training step's time goes: lightgcn against slifmr on ml-100k (issue 15's
cost target), measured side by side in one process with torch's profiler.

    python -m benchmarks.speed.step_profile --steps 8 --threads 1

For each variant: seconds per step (forward, backward and Adam over the epoch-1 graphs, at
its own batch) and the operators with the most self CPU time (--data: another dataset folder).
Writes benchmarks/results/step-profile.json and the STEP_PROFILE block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from benchmarks.lib import results


def profile(variant: str, steps: int, top: int, data: str | None = None) -> dict:
    from slifmr.config import load_config
    from slifmr.data.graphs import training_pairs
    from slifmr.model.graphs import epoch_graphs
    from slifmr.model.slifmr import TrainingBatch
    from slifmr.ranking import resolve_dataset
    from slifmr.sampling.negative import BPRSampler
    from slifmr.training import build_model

    cfg = load_config(variant=variant, overrides=[f"data={data}"] if data else [])
    ds = resolve_dataset(cfg)
    model, static = build_model(cfg, ds)
    graphs = model.attend(epoch_graphs(static, None, cfg.model, torch.Generator().manual_seed(0)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)  # as the trainer's DDPStrategy
    sampler = BPRSampler(*training_pairs(ds), ds.num_items, cfg.train.batch_size, 1)
    batches = [b for _, b in zip(range(steps + 1), sampler.epoch(1))]

    def step(triples: tuple) -> None:
        parts = model(TrainingBatch.full(graphs, triples, torch.Generator()))
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()

    step(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches[1:]:
        step(b)
    seconds = (time.perf_counter() - start) / steps
    with torch.autograd.profiler.profile() as prof:
        for b in batches[1:]:
            step(b)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return {"variant": variant, "seconds_per_step": seconds, "batch_size": cfg.train.batch_size, "steps_per_epoch": len(sampler),
            "top_ops": [{"op": e.key, "self_cpu_seconds_per_step": e.self_cpu_time_total / 1e6 / steps,
                         "calls_per_step": e.count / steps} for e in ops]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["lightgcn", "slifmr"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--data", help="a dataset folder (default: the embedded ml-100k)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [profile(v, args.steps, args.top, args.data) for v in args.variants]
    command = results.this_command()
    results.write_results("step-profile", {"threads": args.threads, "rows": rows},
                          note=f"{args.threads} torch thread(s), nothing else running")
    base = rows[0]["seconds_per_step"]
    lines = ["### Where a training step's time goes (issue 15, cost)", "", f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s), nothing else running. "
             f"{'ml-100k' if not args.data else args.data}, full graph, "
             "each variant's own global batch, epoch-1 graphs; wall seconds per step without the profiler, then the operators' self "
             "CPU time per step under it (the profiler adds its own overhead).", ""]
    for r in rows:
        lines.append(f"**{r['variant']}**: {r['seconds_per_step']:.3f} s/step ({r['seconds_per_step'] / base:.2f}x "
                     f"{rows[0]['variant']}), global batch {r['batch_size']:,}, {r['steps_per_epoch']} steps per epoch.")
        lines += ["", "| operator | self CPU s/step | calls/step |", "|---|---|---|"]
        lines += [f"| {o['op']} | {o['self_cpu_seconds_per_step']:.4f} | {o['calls_per_step']:.0f} |" for o in r["top_ops"]]
        lines.append("")
    results.write_section("STEP_PROFILE", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
