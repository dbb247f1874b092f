"""Does more item-item regression add accuracy? A trained slifmr run's embedding scores blended
with its own ridge head and with a full EASE head (a trained `ease` run), weights chosen on
validation, then test Recall@20 of the chosen blend.

    python benchmarks/blend_probe.py SLIFMR_RUN EASE_RUN

Each part is standardised per user over the N items (as slifmr's score is): the embeddings'
u . z, the head's x_u W, EASE's x_u B. The grid: head weight 0 or 0.5, EASE weight 0, 0.5, 1,
2, 4 (embeddings 1). Prints each validation Recall@20, the chosen blend's test Recall@20, and
the run's own and EASE's test Recall@20 for comparison.
"""

from __future__ import annotations

import itertools
import sys

import torch


def main() -> int:
    import slifmr
    from slifmr.data.format import TEST, VALID
    from slifmr.evaluation import Evaluator
    from slifmr.model.ridge import ridge_scores
    from slifmr.model.slifmr import _standardise

    run, ease = slifmr.load_run(sys.argv[1]), slifmr.load_run(sys.argv[2]).model
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
