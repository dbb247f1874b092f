"""Sweep files (tune_configs/*.yaml): what to search, how, and with what budget.

    variant: slifmr              # the variant every trial starts from
    data: null                   # dataset folder; null = the embedded ml-100k
    set: {train.patience: 100}   # fixed config keys for every trial
    metric: valid_recall@20      # a VALIDATION metric: test metrics never select
    mode: max                    # (ranking metrics: higher is better)
    samples: 16                  # trials
    concurrency: 2               # trials at once
    workers_per_trial: 0         # 0: the loop runs in the trial; N: a Ray Train run of N workers
    search: random               # random | optuna (TPE; needs optuna)
    scheduler: {type: asha, grace_period: 5, max_t: 40, reduction_factor: 3}
    space:                       # config key -> one distribution
      model.k_corr: {choice: [5, 10, 20]}
      model.beta: {uniform: [0.1, 0.9]}
      model.gamma: {loguniform: [0.01, 1.0]}
      model.warmup_epochs: {randint: [0, 5]}   # high exclusive, as numpy's

Every key maps onto the typed config `slifmr train` uses; anything unknown, an empty range,
an unsupported distribution or a scheduler whose max_t is below its grace period is refused
before a trial starts. The scheduler's max_t is the trials' epoch budget (train.epochs).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slifmr.config import Config, load_config, set_key, validate
from slifmr.errors import ConfigError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SEARCHES = ("random", "optuna")
TOP_KEYS = {"variant", "data", "set", "metric", "mode", "samples", "concurrency", "workers_per_trial", "gpu",
            "search", "scheduler", "space", "seed"}
SCHEDULER_KEYS = {"type", "grace_period", "max_t", "reduction_factor"}


@dataclass
class Scheduler:
    type: str = "asha"
    grace_period: int = 5
    max_t: int = 40
    reduction_factor: int = 3


@dataclass
class SweepSpec:
    source: str
    variant: str = "slifmr"
    data: str | None = None
    set: dict[str, Any] = field(default_factory=dict)
    metric: str = "valid_recall@20"
    mode: str = "max"
    samples: int = 16
    concurrency: int = 2
    workers_per_trial: int = 0
    gpu: bool = False
    search: str = "random"
    seed: int = 0  # of the search algorithm
    scheduler: Scheduler = field(default_factory=Scheduler)
    space: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def base_config(self) -> Config:
        """The config every trial starts from (before its sampled values)."""
        cfg = load_config(variant=self.variant)
        # the scheduler, not early stopping, ends a trial (unless `set` fixes a patience), and
        # each trial's best/ follows the sweep's metric
        fixed = {"train.patience": self.scheduler.max_t, **self.set, "train.epochs": self.scheduler.max_t,
                 "train.stop_metric": self.metric.removeprefix("valid_")}
        for key, value in fixed.items():
            set_key(cfg, key, value)
        cfg.data = self.data
        validate(cfg)
        return cfg

    def trial_config(self, params: dict[str, Any]) -> Config:
        cfg = self.base_config()  # a fresh Config each call
        for key, value in params.items():
            set_key(cfg, key, value)
        validate(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "data": self.data, "set": self.set, "metric": self.metric, "mode": self.mode,
                "samples": self.samples, "concurrency": self.concurrency, "workers_per_trial": self.workers_per_trial,
                "gpu": self.gpu, "search": self.search, "seed": self.seed, "scheduler": vars(self.scheduler).copy(),
                "space": self.space}


def _err(source: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {msg}")


def _check_distribution(source: str, key: str, dist: Any) -> tuple[str, list[Any]]:
    if not isinstance(dist, dict) or len(dist) != 1:
        raise _err(source, f"space.{key}: expected one distribution such as {{uniform: [0.1, 0.9]}}")
    (kind, args), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise _err(source, f"space.{key}: unsupported distribution '{kind}' (supported: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(args, list) or not args:
        raise _err(source, f"space.{key}: {kind} needs a non-empty list")
    if kind == "choice":
        return kind, args
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise _err(source, f"space.{key}: {kind} needs [low, high] numbers, got {args}")
    low, high = args
    if not low < high:
        raise _err(source, f"space.{key}: empty range [{low}, {high}] (low must be below high)")
    if kind == "loguniform" and low <= 0:
        raise _err(source, f"space.{key}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise _err(source, f"space.{key}: randint needs integer bounds, got {args}")
    return kind, args


def _samples_of(kind: str, args: list[Any]) -> list[Any]:
    """Values that exercise the config's type check: every choice, or the range's ends."""
    if kind == "choice":
        return args
    if kind == "randint":
        return [int(args[0]), int(args[1]) - 1]
    if kind == "loguniform":
        return [args[0], math.sqrt(args[0] * args[1])]
    return [args[0], (args[0] + args[1]) / 2]


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise _err(source, f"invalid YAML ({str(e).splitlines()[0]})") from e
    return spec_from_dict(raw, source)


def spec_from_dict(raw: Any, source: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise _err(source, "expected a mapping (variant, set, metric, scheduler, space, ...)")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _err(source, f"unknown key '{unknown[0]}' (known: {', '.join(sorted(TOP_KEYS))})")
    sched_raw = raw.get("scheduler") or {}
    if not isinstance(sched_raw, dict) or set(sched_raw) - SCHEDULER_KEYS:
        bad = sorted(set(sched_raw) - SCHEDULER_KEYS) if isinstance(sched_raw, dict) else ["(not a mapping)"]
        raise _err(source, f"scheduler: unknown key '{bad[0]}' (known: {', '.join(sorted(SCHEDULER_KEYS))})")
    try:
        sched = Scheduler(**sched_raw)
        spec = SweepSpec(source=source, **{k: v for k, v in raw.items() if k != "scheduler"}, scheduler=sched)
    except TypeError as e:
        raise _err(source, str(e)) from e
    if sched.type != "asha":
        raise _err(source, f"scheduler.type '{sched.type}' is not supported (supported: asha)")
    for name in ("grace_period", "max_t", "reduction_factor"):
        value = getattr(sched, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _err(source, f"scheduler.{name} must be a positive integer, got {value!r}")
    if sched.reduction_factor < 2:
        raise _err(source, "scheduler.reduction_factor must be at least 2")
    if sched.max_t < sched.grace_period:
        raise _err(source, f"scheduler.max_t ({sched.max_t}) is below its grace_period ({sched.grace_period})")
    if not str(spec.metric).startswith("valid_"):
        raise _err(source, f"metric '{spec.metric}' is not a validation metric (valid_...): test metrics never select")
    if spec.mode != "max":
        raise _err(source, f"mode must be max (every ranking metric grows with quality), got {spec.mode!r}")
    if spec.search not in SEARCHES:
        raise _err(source, f"search '{spec.search}' is not supported (supported: {', '.join(SEARCHES)})")
    for name in ("samples", "concurrency"):
        if not isinstance(getattr(spec, name), int) or getattr(spec, name) < 1:
            raise _err(source, f"{name} must be a positive integer")
    if not isinstance(spec.workers_per_trial, int) or spec.workers_per_trial < 0:
        raise _err(source, "workers_per_trial must be >= 0")
    if not isinstance(spec.set, dict) or not isinstance(spec.space, dict) or not spec.space:
        raise _err(source, "set must be a mapping and space a non-empty mapping of config keys to distributions")
    metric_name = spec.metric.removeprefix("valid_")
    kind, _, k = metric_name.partition("@")
    if kind not in ("recall", "ndcg", "precision", "hit") or not k.isdigit():
        raise _err(source, f"metric '{spec.metric}' is not one the trials report (valid_<recall|ndcg|precision|hit>@K)")
    try:
        base = spec.base_config()
    except ConfigError as e:
        raise _err(source, str(e)) from e
    for key, dist in spec.space.items():
        kind, args = _check_distribution(source, key, dist)
        for value in _samples_of(kind, args):
            trial = copy.deepcopy(base)
            try:
                set_key(trial, key, value)
                validate(trial)
            except ConfigError as e:
                raise _err(source, f"space: {e}") from e
        if key in spec.set:
            raise _err(source, f"space.{key} is also fixed in set")
    return spec


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Ray Tune search space of the spec (flat, keyed by config key)."""
    from ray import tune

    make = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(int(a[0]), int(a[1]))}
    return {key: make[next(iter(d))](next(iter(d.values()))) for key, d in spec.space.items()}
