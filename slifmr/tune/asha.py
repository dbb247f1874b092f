"""ASHA whose rung scores survive `slifmr tune --resume`.

Ray Tune restores a sweep's scheduler as it was pickled when the sweep started, with empty
rungs (ray-project/ray#15177; sisinflab/warprec#126), so after Ctrl-C and --resume, ASHA would
let trials it had already judged train to max_t. Every trial's validation metric per epoch is
in its run folder's metrics.jsonl: when Tune adds a restored trial, the results it had
reported (up to its last_result's epoch) are replayed into the rungs, so the resumed sweep
stops the trials an uninterrupted one would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from slifmr.launch import flat_metrics
from slifmr.run_layout import RunLayout


class ResumableASHA(ASHAScheduler):
    """ASHAScheduler (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
    MLSys 2020) over the sweep in `sweep_dir`, its trials' run folders at runs/<trial id>."""

    def __init__(self, sweep_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep_dir = sweep_dir

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self._replay(trial)

    def _replay(self, trial: Any) -> None:
        path = RunLayout(Path(self.sweep_dir) / "runs" / trial.trial_id).metrics
        if not path.exists():  # a new trial
            return
        last = (trial.last_result or {}).get(self._time_attr, 0)  # none: Tune had no result of it
        bracket = self._trial_info[trial.trial_id]
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            result = flat_metrics(json.loads(line))
            if result[self._time_attr] > last:
                break  # not reported to Tune before the interrupt: the trial trains it again
            if result.get(self._metric) is not None:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
