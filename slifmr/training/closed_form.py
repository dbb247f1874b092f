"""The closed-form recipe: variants solved in one go (config.CLOSED_FORM: ease, cooc_ridge, pop,
ials) instead of trained by gradient steps. Each value of the variant's grid (`closed_form_grid`:
model.ease_l2's ridge weights, iALS's (alpha, reg) pairs) is one solve and one metrics.jsonl line
(as if an epoch); the best by validation is kept; the run folder is the gradient recipe's."""

from __future__ import annotations

import shutil
import time
from typing import Any

from slifmr import log
from slifmr.config import Config
from slifmr.data.format import VALID, Dataset
from slifmr.distributed.checkpoint import save_checkpoint
from slifmr.distributed.collectives import Comm
from slifmr.errors import NonFiniteError, SlifmrError
from slifmr.tracking import tracking
from slifmr.training.best import final_results
from slifmr.training.build import build_closed_form, build_evaluator, closed_form_grid
from slifmr.training.records import EarlyStopping, EpochRecord, Reporter
from slifmr.training.run_folder import RunFolder


def fit_closed_form(cfg: Config, run: RunFolder, ds: Dataset, comm: Comm, reporter: Reporter | None = None,
                    evaluate_test: bool = True) -> dict[str, Any]:
    """Solve `cfg.variant` for every value of its grid (`closed_form_grid`), keep the best by validation,
    then the test metrics (results.json's contents). Raises SlifmrError on more than one worker,
    NonFiniteError when a solve is not finite."""
    if comm.world_size > 1:
        raise SlifmrError(f"variant {cfg.variant} is a closed form solved in one process: run it with --workers 0")
    run.create(cfg)
    evaluator = build_evaluator(cfg, ds, comm)
    with tracking(cfg, run.path, enabled=comm.is_main) as tracker:
        model = build_closed_form(cfg, ds)
        stopper = EarlyStopping()
        for step, value in enumerate(closed_form_grid(cfg), start=1):
            t0, started = time.perf_counter(), time.time()
            model.fit(value)
            if not model.finite():
                raise NonFiniteError(f"{cfg.variant} with {_named(value)}: the solved weights are not finite")
            valid = evaluator.evaluate(model.full_scores, VALID)
            alpha, l2 = value if isinstance(value, tuple) else (None, value)  # iALS: (alpha, reg)
            rec = EpochRecord(epoch=step, l2=l2, alpha=alpha, loss={"loss": 0.0}, valid=valid,
                              is_best=stopper.step(valid[cfg.train.stop_metric], step),
                              epoch_seconds=time.perf_counter() - t0, epoch_start_unix_seconds=started)
            run.append(rec)
            if rec.is_best:
                save_checkpoint(run.path / "best", {"model": model.state_dict()}, run.meta(cfg, ds, step))
            log.info(f"{cfg.variant}" + (f" alpha {alpha:g}" if alpha is not None else "") + (f" l2 {l2:g}" if l2 is not None else "") + f" | valid {cfg.train.stop_metric} "
                     f"{valid[cfg.train.stop_metric]:.4f}" + (" *" if rec.is_best else ""))
            if tracker is not None:
                tracker.log_epoch(rec.to_json())
            if reporter is not None:
                reporter(rec.to_json(), run.path / "best")
        shutil.copytree(run.path / "best", run.path / "checkpoint", dirs_exist_ok=True)  # marks the folder as a run
        results = final_results(cfg, ds, run, evaluator, comm, evaluate_test)
        if tracker is not None:
            tracker.finish(results)
    return results


def _named(value: object) -> str:
    """The config keys and values of one grid point, for an error line."""
    if isinstance(value, tuple):
        return f"model.ials_alpha {value[0]} and model.ials_reg {value[1]}"
    return f"model.ease_l2 {value}"
