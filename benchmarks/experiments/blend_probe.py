"""Does more item-item regression add accuracy? A trained slifmr run's embedding scores blended
with its own ridge head and with a full EASE head (a trained `ease` run), weights chosen on
validation, then test Recall@20 of the chosen blend.

    python -m benchmarks.experiments.blend_probe SLIFMR_RUN EASE_RUN

Each part is standardised per user over the N items (as slifmr's score is): the embeddings'
u . z, the head's x_u W, EASE's x_u B. The grid: head weight 0 or 0.5, EASE weight 0, 0.5, 1,
2, 4 (embeddings 1). Prints each validation Recall@20, the chosen blend's test Recall@20, and
the run's own and EASE's test Recall@20 for comparison (prints only). An archived probe
(benchmarks/experiments/README.md says what it found); it reads slifmr's private `_standardise`
and `_embedding_scores`, so it may need adapting to today's code.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import torch


def main() -> int:
    import slifmr
    from slifmr.data.format import TEST, VALID
    from slifmr.evaluation import Evaluator
    from slifmr.model.ridge import ridge_scores
    from slifmr.model.slifmr import _standardise

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slifmr_run", help="a trained slifmr run folder")
    ap.add_argument("ease_run", help="a trained ease run folder on the same dataset")
    args = ap.parse_args()
    run, ease = slifmr.load_run(args.slifmr_run), slifmr.load_run(args.ease_run).model
    reps = run.model
    ev = Evaluator(run.dataset, [20], 512)

    def blend(head: float, full: float):  # noqa: ANN202
        def scores(users: torch.Tensor) -> torch.Tensor:
            out = _standardise(reps._embedding_scores(users))
            if head:
                out = out + head * _standardise(ridge_scores(reps.interactions, reps.item_ridge, users))
            if full:
                out = out + full * _standardise(ease.full_scores(users).float())
            return out
        return scores

    grid = []
    for head, full in itertools.product([0.0, 0.5], [0.0, 0.5, 1.0, 2.0, 4.0]):
        valid = ev.evaluate(blend(head, full), VALID)["recall@20"]
        grid.append((valid, head, full))
        print(f"head {head} ease {full}: valid recall@20 {valid:.4f}", flush=True)
    valid, head, full = max(grid)
    print(f"chosen head {head} ease {full} (valid {valid:.4f}): test recall@20 "
          f"{ev.evaluate(blend(head, full), TEST)['recall@20']:.4f}")
    print(f"the run as trained: test recall@20 {ev.evaluate(reps.full_scores, TEST)['recall@20']:.4f}; "
          f"ease: {ev.evaluate(ease.full_scores, TEST)['recall@20']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
