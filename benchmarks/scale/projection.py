"""Beyond one machine, on paper: the epoch time of history-sampled training for 10^8
interactions on 8 and 32 GPU workers, from what benchmarks/scale/scale.py measured (issue 14).

    python -m benchmarks.scale.projection --interactions 100000000 --workers 8 32

Inputs, all read from benchmarks/results/scale.json (mode history, the largest size):
- c: compute seconds per training interaction per worker = (s/step - sync s/step) / per-worker
  batch, from the 1-worker row (one CPU core; a GPU worker is taken to be no faster, so the
  compute term is an upper bound);
- r: bytes one worker puts into the row-sparse gradient exchange per step, per interaction of its
  batch, from the 2-worker row (the touched rows and their gradients grow with the batch);
- f: seconds outside the steps per epoch (historical-embedding refresh, fusion, evaluation) per
  training interaction, from the 1-worker row; layer-wise inference and the kNN are sharded, so
  it divides by the workers.

    T_epoch(I, W, B, beta) = I/B * (c * B/W + (W - 1) * r * B/W / beta + alpha * log2 W) + f * I / W

with global batch B (--batch), link bandwidth beta (25 GB/s: NVLink-class; 100 Gb/s = 12.5 GB/s:
an InfiniBand/Ethernet NIC) and latency alpha (--latency) per all-gather round; the exchange is an
all-gather of each worker's rows (ring: every worker receives the other W - 1 contributions).
Writes benchmarks/results/projection.json and the PROJECTION block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from benchmarks.lib import results


def inputs(scale: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in scale["runs"] if r["mode"] == "history" and r["exit_status"] == 0]
    if not rows:
        raise SystemExit("results/scale.json has no history rows: run benchmarks.scale.scale first")
    users = max(r["users"] for r in rows)
    one = next((r for r in rows if r["users"] == users and r["workers"] == 1), None)
    two = next((r for r in rows if r["users"] == users and r["workers"] == 2), None)
    if one is None or two is None:
        raise SystemExit(f"scale.json needs history rows with 1 and 2 workers at {users:,} users")
    per_worker_one = one["batch_size"]
    per_worker_two = two["batch_size"] / 2
    return {
        "users": users, "train_interactions": one["train_interactions"],
        "compute_seconds_per_interaction": (one["seconds_per_step"] - one["comm_seconds_per_step"]) / per_worker_one,
        "exchange_bytes_per_interaction": two["grad_bytes_per_step"] / per_worker_two,
        "outside_seconds_per_interaction": one["outside_steps_seconds"] / one["train_interactions"],
    }


def epoch_seconds(inp: dict[str, Any], interactions: float, workers: int, batch: int, bandwidth: float,
                  latency: float) -> dict[str, float]:
    steps = interactions / batch
    per_worker = batch / workers
    compute = inp["compute_seconds_per_interaction"] * per_worker
    exchange = (workers - 1) * inp["exchange_bytes_per_interaction"] * per_worker / bandwidth + latency * math.log2(workers)
    outside = inp["outside_seconds_per_interaction"] * interactions / workers
    return {"steps": steps, "compute_seconds_per_step": compute, "exchange_seconds_per_step": exchange,
            "outside_seconds": outside, "epoch_seconds": steps * (compute + exchange) + outside}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=float, default=1e8)
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--batch", type=int, default=262_144, help="global batch (8,192 per worker at 32 workers)")
    ap.add_argument("--bandwidths", type=float, nargs="+", default=[25e9, 12.5e9], help="bytes/s per link")
    ap.add_argument("--latency", type=float, default=50e-6, help="seconds per all-gather round")
    args = ap.parse_args()
    scale = results.read_results("scale")
    inp = inputs(scale)
    rows = [{"workers": w, "bandwidth_bytes_per_second": bw,
             **epoch_seconds(inp, args.interactions, w, args.batch, bw, args.latency)}
            for w in args.workers for bw in args.bandwidths]
    command = results.this_command()
    doc = {"scale_command": scale["command"], "scale_commit": scale.get("commit"), "inputs": inp,
           "interactions": args.interactions, "batch_size": args.batch, "latency_seconds": args.latency, "rows": rows}
    results.write_results("projection", doc, note="a projection from results/scale.json: nothing measured here")
    table = ["| workers | link | steps | compute s/step | exchange s/step | outside the steps s | epoch s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        link = f"{r['bandwidth_bytes_per_second'] / 1e9:g} GB/s"
        table.append(f"| {r['workers']} | {link} | {r['steps']:,.0f} | {r['compute_seconds_per_step']:.3f} | "
                     f"{r['exchange_seconds_per_step']:.4f} | {r['outside_seconds']:,.0f} | {r['epoch_seconds']:,.0f} |")
    text = (f"### Projection: history sampling beyond one machine (issue 14)\n\nCommand: `{command}` (inputs from "
            f"`{scale['command']}`)  \nFormula (benchmarks/scale/projection.py): T_epoch = I/B x (c x B/W + (W-1) x r x B/W / beta "
            f"+ alpha log2 W) + f x I/W, with I = {args.interactions:,.0f} interactions, global batch B = {args.batch:,}, "
            f"alpha = {args.latency * 1e6:g} us.\n\nMeasured inputs at {inp['users']:,} users: c = "
            f"{inp['compute_seconds_per_interaction'] * 1e6:.1f} us of compute per interaction per worker (one CPU core; "
            f"a GPU worker taken as no faster, so compute is an upper bound); r = {inp['exchange_bytes_per_interaction']:,.0f} "
            f"bytes exchanged per interaction of a worker's batch (2-worker row-sparse exchange); f = "
            f"{inp['outside_seconds_per_interaction'] * 1e6:.2f} us per interaction outside the steps (memory refresh, "
            f"fusion, evaluation), divided by the workers.\n\n" + "\n".join(table) + "\n")
    results.write_section("PROJECTION", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
