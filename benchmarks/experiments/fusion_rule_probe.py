"""How to fuse the two scores of a trained slifmr run: the embeddings' u . z and the ridge head's
x_u W, each rule's weight chosen on validation (never test), then test Recall@20 of the chosen
blend. Also one weight per user-degree bucket (quantiles of training history length), chosen on
validation bucket by bucket, against the one global weight slifmr uses.

    python -m benchmarks.experiments.fusion_rule_probe RUN [RUN ...]

Rules (each part normalised per user over the N items): zscore (slifmr's), z-score by the
moments of the part's own top 20 or top 100, min-max, division by the largest absolute score, and
reciprocal-rank fusion 1 / (c + rank) with c = 10, 60. Writes results/fusion-rule-probe.json and
prints its table (mean over the runs given). An archived probe (benchmarks/experiments/README.md
says what it found); it reads slifmr's private `_standardise` and `_embedding_scores`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections.abc import Callable

import torch

GRID = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0]


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(x, 1, descending=True), 1).float()  # 0 = the user's best item


def _top_z(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def norm(x: torch.Tensor) -> torch.Tensor:
        top = torch.topk(x, k, 1).values
        return (x - top.mean(1, keepdim=True)) / top.std(1, keepdim=True).clamp_min(1e-12)
    return norm


def _min_max(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def rules() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    from slifmr.model.slifmr import _standardise

    return {"zscore (slifmr)": _standardise, "top-20 z-score": _top_z(20), "top-100 z-score": _top_z(100),
            "min-max": _min_max, "divide by the largest absolute score": lambda x: x / x.abs().max(1, keepdim=True).values.clamp_min(1e-12),
            "reciprocal rank, c = 10": lambda x: 1 / (10 + _ranks(x)),
            "reciprocal rank, c = 60": lambda x: 1 / (60 + _ranks(x))}


def probe(run_dir: str) -> dict[str, dict[str, float]]:
    import slifmr
    from slifmr.data.format import TEST, VALID
    from slifmr.evaluation import Evaluator
    from slifmr.model.ridge import ridge_scores
    from slifmr.model.slifmr import _standardise

    run = slifmr.load_run(run_dir)
    reps, users = run.model, torch.arange(run.dataset.num_users)
    evaluator = Evaluator(run.dataset, [20], 2048)
    emb, head = reps._embedding_scores(users), ridge_scores(reps.interactions, reps.item_ridge, users)

    def recall(scores: torch.Tensor, split: int) -> float:
        return evaluator.evaluate(lambda u: scores[u], split)["recall@20"]

    out = {}
    for name, norm in rules().items():
        a, b = norm(emb), norm(head)
        valid, w = max((recall(a + w * b, VALID), w) for w in GRID)
        out[name] = {"weight": w, "valid": valid, "test": recall(a + w * b, TEST)}
    a, b = _standardise(emb), _standardise(head)
    degree = torch.bincount(reps.interactions.coalesce().indices()[0], minlength=users.numel()).float()
    best = out["zscore (slifmr)"]["weight"]
    for buckets in (2, 3, 4):
        bucket = torch.bucketize(degree, torch.quantile(degree, torch.linspace(0, 1, buckets + 1)[1:-1]))
        w = torch.full((users.numel(),), best)
        for k in range(buckets):  # each bucket's weight on validation, the others held
            def valid_with(x: float, mask: torch.Tensor = bucket == k, held: torch.Tensor = w) -> float:
                trial = held.clone()
                trial[mask] = x
                return recall(a + trial[:, None] * b, VALID)
            w[bucket == k] = max(GRID, key=valid_with)
        out[f"zscore, a weight per degree bucket ({buckets})"] = {
            "weight": [float(w[bucket == k][0]) for k in range(buckets)],
            "valid": recall(a + w[:, None] * b, VALID), "test": recall(a + w[:, None] * b, TEST)}
    return out


def main() -> int:
    from benchmarks.lib import results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="trained slifmr run folders")
    args = ap.parse_args()
    torch.set_num_threads(1)
    per_run = {r: probe(r) for r in args.runs}
    names = list(next(iter(per_run.values())))
    command = results.this_command()
    lines = ["### Fusing the embeddings and the ridge head: the rule and per-degree weights, chosen on validation", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, one torch thread. Each rule's weight (and each "
             f"bucket's) chosen on validation from {GRID}; means over the {len(per_run)} trained runs.", "",
             "| rule | valid Recall@20 | test Recall@20 | test, difference to zscore |", "|---|---|---|---|"]
    base = statistics.mean(r["zscore (slifmr)"]["test"] for r in per_run.values())
    for n in names:
        valid = statistics.mean(r[n]["valid"] for r in per_run.values())
        test = statistics.mean(r[n]["test"] for r in per_run.values())
        lines.append(f"| {n} | {valid:.4f} | {test:.4f} | {test - base:+.4f} |")
    results.write_results("fusion-rule-probe", {"runs": per_run}, note="one torch thread")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
