"""How the self-loop's ridge head's settings were chosen: validation only, one trained model.

Takes a finished slifmr run trained without the head (variant no_ridge, or a run from before the
head existed), builds the head from its best epoch's fused item representations for every
(ridge_k, ridge_l2, ridge_weight) of a grid, and reads validation Recall@20 of the fused ranking
score (test is never read). The embeddings do not depend on the head (it has no gradient), so
one trained model scores every setting.

    python -m benchmarks.quality.ridge_search --run benchmarks/runs/quality_peers/slifmr-seed0

Writes benchmarks/results/ridge-search.json and the RIDGE_SEARCH block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.lib import results


def main() -> int:
    from slifmr.config import from_dict, read_config_file
    from slifmr.data.format import VALID
    from slifmr.data.graphs import knn
    from slifmr.evaluation import Evaluator
    from slifmr.model.graphs import StaticGraphs
    from slifmr.model.ridge import ridge_weights
    from slifmr.model.slifmr import Representations
    from slifmr.ranking import resolve_dataset
    from slifmr.training import load_best

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--k", nargs="+", type=int, default=[50, 100, 200, 400])
    ap.add_argument("--l2", nargs="+", type=float, default=[50.0, 200.0, 800.0])
    ap.add_argument("--weight", nargs="+", type=float, default=[0.25, 0.5, 0.75, 1.0, 1.5])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = from_dict(read_config_file(args.run / "config.yaml"))
    ds = resolve_dataset(cfg)
    reps, meta = load_best(cfg, ds, args.run)
    if reps.item_ridge is not None:
        raise SystemExit(f"{args.run} ranks with a ridge head already: give a run trained without it")
    static = StaticGraphs.from_dataset(ds, cfg.model)
    evaluator = Evaluator(ds, [20], 1024)
    nbrs, _ = knn(reps.items, max(args.k))
    rows = [{"k": 0, "l2": 0.0, "weight": 0.0, "valid_recall@20": evaluator.evaluate(reps.full_scores, VALID)["recall@20"]}]
    for k in args.k:
        for l2 in args.l2:
            w_t = ridge_weights(static.ui_edges, ds.num_users, ds.num_items, nbrs[:, :k].contiguous(), l2)
            for weight in args.weight:
                scorer = Representations(reps.users, reps.items, reps.cosine, w_t, static.interactions, weight)
                rows.append({"k": k, "l2": l2, "weight": weight,
                             "valid_recall@20": evaluator.evaluate(scorer.full_scores, VALID)["recall@20"]})
                print(json.dumps(rows[-1]), flush=True)
    command = results.this_command()
    doc = {"run": str(args.run), "best_epoch": int(meta["epoch"]), "rows": rows}
    results.write_results("ridge-search", doc, note=f"{args.threads} torch thread(s)")
    best = sorted(rows[1:], key=lambda r: -r["valid_recall@20"])[:8]
    lines = ["### The ridge head's settings, chosen on validation (issue 15)", "",
             f"Command: `{command}`  ",
             f"Machine: x86_64, 2 cores, {args.threads} torch thread(s). One slifmr model trained without the head "
             f"(best epoch {meta['epoch']}); the head built from its Z for each setting; validation Recall@20 of the "
             f"fused score. Without the head: {rows[0]['valid_recall@20']:.4f}. The best settings:", "",
             "| ridge_k | ridge_l2 | ridge_weight | valid Recall@20 |", "|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['l2']:g} | {r['weight']:g} | {r['valid_recall@20']:.4f} |" for r in best]
    results.write_section("RIDGE_SEARCH", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
