"""The closed-form recipe: a variant registered in slifmr/closed_forms.py, solved in one go
instead of trained by gradient steps. Each point of its grid (model.ease_l2's ridge weights,
iALS's (alpha, reg) pairs, one point without a grid) is one solve and one metrics.jsonl line,
as if an epoch; the best by validation is kept. The run's lifecycle (run folder, tracker,
reporter, test metrics) is the training loop's (loop.py: `train_loop`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slifmr import log
from slifmr.closed_forms import CLOSED_FORMS, ClosedForm
from slifmr.config import Config
from slifmr.data.format import VALID, Dataset
from slifmr.distributed.checkpoint import save_checkpoint
from slifmr.distributed.collectives import Comm
from slifmr.errors import NonFiniteError, SlifmrError
from slifmr.evaluation import Evaluator
from slifmr.training.build import build_evaluator
from slifmr.training.records import EpochRecord
from slifmr.training.run_folder import LoopState, RunFolder


@dataclass
class ClosedFormJob:
    """A closed form's run: its registry entry `form`, its model (not yet solved) and the evaluator."""

    form: ClosedForm
    model: Any
    evaluator: Evaluator
    static: None = None  # no graphs to hand to the test evaluation

    @classmethod
    def build(cls, cfg: Config, ds: Dataset, comm: Comm) -> ClosedFormJob:
        """Raises SlifmrError on more than one worker."""
        if comm.world_size > 1:
            raise SlifmrError(f"variant {cfg.variant} is a closed form solved in one process: run it with --workers 0")
        form = CLOSED_FORMS[cfg.variant]
        return cls(form, form.build(cfg, ds), build_evaluator(cfg.train, ds, comm))

    def start(self, run: RunFolder, cfg: Config, ds: Dataset, checkpoint: Path | None, resume: bool) -> LoopState:
        """A new run folder (a closed form has nothing to resume: options.py refuses --resume)."""
        if resume:
            raise SlifmrError(f"variant {cfg.variant} is solved in one go: there is nothing to resume")
        run.create(cfg)
        return LoopState()

    def reported(self, run: RunFolder) -> Path:
        """The folder a sweep's reporter hands Ray with each line: the best solve so far."""
        return run.best

    def epochs(self, run: RunFolder, state: LoopState, cfg: Config, ds: Dataset) -> Iterator[EpochRecord]:
        """Each grid point solved, validated and recorded (best/ when best); raises
        NonFiniteError when a solve is not finite. checkpoint/ is best/ at the end: it marks
        the folder as a run."""
        for step, point in enumerate(self.form.points(cfg), start=1):
            t0, started = time.perf_counter(), time.time()
            self.model.fit(**point)
            if not self.model.finite():
                raise NonFiniteError(f"{cfg.variant} with {_named(self.form, point)}: the solved weights are not finite")
            valid = self.evaluator.evaluate(self.model.full_scores, VALID)
            rec = EpochRecord(epoch=step, l2=point.get("l2", point.get("reg")), alpha=point.get("alpha"), grid=point or None,
                              loss={"loss": 0.0}, valid=valid,
                              is_best=state.stopper.step(valid[cfg.train.stop_metric], step),
                              epoch_seconds=time.perf_counter() - t0, epoch_start_unix_seconds=started)
            state.epoch = step
            run.append(rec)
            if rec.is_best:
                save_checkpoint(run.best, {"model": self.model.state_dict()}, run.meta(cfg, ds, step))
            log.info(" ".join([cfg.variant, *(f"{k} {v:g}" for k, v in point.items())]) +
                     f" | valid {cfg.train.stop_metric} {valid[cfg.train.stop_metric]:.4f}" + (" *" if rec.is_best else ""))
            yield rec
        shutil.copytree(run.best, run.checkpoint, dirs_exist_ok=True)


def _named(form: ClosedForm, point: dict[str, Any]) -> str:
    """The config keys and values of one grid point, for an error line."""
    return " and ".join(f"{form.grid[k]} {v}" for k, v in point.items()) or "its one solve"
