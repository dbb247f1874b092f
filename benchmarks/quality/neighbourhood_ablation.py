"""Do the self-loop's neighbourhoods beat plain co-occurrence ones? The ridge head of one trained
slifmr run rebuilt on each kind of neighbourhood, everything else held equal.

    python -m benchmarks.quality.neighbourhood_ablation --run benchmarks/runs/quality_scale_preset/slifmr-seed0

From the run's best epoch: its representations (users, Z), and for each neighbourhood kind and
ridge l2, the head W solved on it (`ridge_weights`) and the blend chosen on validation from
[0.25, 0.5, 1, 2, 4] (the run's own rule). Kinds: Z (each item's nearest items by cosine of the
fused representations, k = 100, 200), cooc (each item's most co-occurring items,
`cooccurrence_neighbours`) and their union (alternating, first k distinct). Reports validation
Recall@20 (which chooses) and test Recall@20 at that choice.

Writes benchmarks/results/neighbourhood-ablation.json and the NEIGHBOURHOOD_ABLATION block of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.lib import results

BLEND = [0.25, 0.5, 1.0, 2.0, 4.0]


def union(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k): a's and b's neighbours taken alternately, the first k distinct."""
    rows = []
    for x, y in zip(a.tolist(), b.tolist()):
        seen: dict[int, None] = {}
        for item in (v for pair in zip(x, y) for v in pair):
            seen.setdefault(item)
            if len(seen) == k:
                break
        rows.append(list(seen))
    return torch.tensor(rows)


def main() -> int:
    from slifmr.config import from_dict, read_config_file
    from slifmr.data.format import TEST, VALID
    from slifmr.data.graphs import knn
    from slifmr.evaluation import Evaluator
    from slifmr.model.cooc_ridge import cooccurrence_neighbours
    from slifmr.model.graphs import StaticGraphs
    from slifmr.model.ridge import ridge_weights
    from slifmr.ranking import resolve_dataset
    from slifmr.training import load_best

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--l2", nargs="+", type=float, default=[100.0, 200.0, 400.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = from_dict(read_config_file(args.run / "config.yaml"))
    ds = resolve_dataset(cfg)
    reps, meta = load_best(cfg, ds, args.run)
    static = StaticGraphs.from_dataset(ds, cfg.model)
    evaluator = Evaluator(ds, [20], 1024)
    z, _ = knn(reps.items, 200)
    cooc = cooccurrence_neighbours(static.ui_edges, ds.num_users, ds.num_items, 200).long()
    kinds = {"Z, k 100": z[:, :100], "cooc, k 100": cooc[:, :100], "union, k 100": union(z, cooc, 100),
             "Z, k 200": z, "cooc, k 200": cooc, "union, k 200": union(z, cooc, 200)}
    rows = []
    for name, nbrs in kinds.items():
        for l2 in args.l2:
            w_t = ridge_weights(static.ui_edges, ds.num_users, ds.num_items, nbrs.contiguous(), l2)
            head = replace(reps, item_ridge=w_t, interactions=static.interactions, ridge_weight=1.0)
            valid = evaluator.evaluate_candidates(lambda u, h=head: h.blends(u, BLEND), len(BLEND), VALID)
            best = max(range(len(BLEND)), key=lambda i: (valid[i]["recall@20"], -i))
            test = evaluator.evaluate(replace(head, ridge_weight=BLEND[best]).full_scores, TEST)["recall@20"]
            rows.append({"neighbourhood": name, "l2": l2, "blend": BLEND[best],
                         "valid_recall@20": valid[best]["recall@20"], "test_recall@20": test})
            print(json.dumps(rows[-1]), flush=True)
    command = results.this_command()
    results.write_results("neighbourhood-ablation", {"run": str(args.run), "best_epoch": int(meta["epoch"]), "rows": rows},
                          note="1 torch thread")
    lines = ["### The ridge head's neighbourhoods: the self-loop's against co-occurrence (issue 28)", "",
             f"Command: `{command}`  ",
             f"Machine: x86_64, 2 cores, 1 torch thread. One trained slifmr run (best epoch {meta['epoch']}); its "
             "head rebuilt on each neighbourhood from its final Z, the blend chosen on validation; everything "
             "else equal.", "", "| neighbourhood | l2 | blend | valid Recall@20 | test Recall@20 |", "|---|---|---|---|---|"]
    lines += [f"| {r['neighbourhood']} | {r['l2']:g} | {r['blend']:g} | {r['valid_recall@20']:.4f} | "
              f"{r['test_recall@20']:.4f} |" for r in rows]
    results.write_section("NEIGHBOURHOOD_ABLATION", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
