"""Training: one loop composing components, each built from its part of the config.

    loop.py         `train_loop`: the run's one lifecycle (start or resume, epochs, tracker,
                    test); `GradientJob` composes the parts below, an epoch is the method,
                    Z(t-1) -> S(t) -> graphs -> steps -> Z(t) -> validation -> checkpoint
    self_loop.py    `SelfLoop`: Z(t-1), S(t) and the epoch's graphs
    ridge_head.py   `RidgeHead`: the item-item ridge head, its neighbourhoods, solves and blend,
                    chosen on validation (rule, k, l2, blend)
    batches.py      a batch source per train.sampling (full, neighbor, history)
    run_folder.py   `RunFolder`: create, resume, per-epoch save, results (its layout:
                    slifmr/run_layout.py)
    closed_form.py  `ClosedFormJob`: the recipe of the variants registered in
                    slifmr/closed_forms.py (ease, cooc_ridge, pop, ials, content_knn)
    build.py        the model and static graphs, the evaluator, threads
    best.py         the best epoch's scorer and the test metrics
    records.py      seed streams, early stopping, metrics.jsonl records

The package is `training` (not `train`): `slifmr.train` is the API's function."""

from slifmr.training.best import final_results, load_best
from slifmr.training.build import build_model
from slifmr.training.loop import learning_rate, train_loop
from slifmr.training.ridge_head import choose_blend

__all__ = ["build_model", "choose_blend", "final_results", "learning_rate", "load_best", "train_loop"]
