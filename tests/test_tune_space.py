"""Sweep files: the shipped ones load, bad ones are refused before any trial, and the
selection of the best trial reads the validation metric only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slifmr.errors import ConfigError, SlifmrError
from slifmr.tune.results import importance, select_best
from slifmr.tune.space import load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
GOOD = yaml.safe_load((ROOT / "tune_configs" / "smoke.yaml").read_text())


@pytest.mark.parametrize("name", ["fusion", "static", "full", "smoke"])
def test_shipped_sweep_files_load(name: str) -> None:
    spec = load_spec(ROOT / "tune_configs" / f"{name}.yaml")
    assert spec.metric == "valid_recall@20" and spec.space
    cfg = spec.base_config()
    assert cfg.train.epochs == spec.scheduler.max_t and cfg.train.stop_metric == "recall@20"


def test_trial_config_applies_sampled_values() -> None:
    spec = spec_from_dict(GOOD)
    cfg = spec.trial_config({"model.beta": 0.25, "model.gamma": 0.5, "model.refresh_every": 2})
    assert (cfg.model.beta, cfg.model.gamma, cfg.model.refresh_every) == (0.25, 0.5, 2)
    assert cfg.model.embedding_dim == 16  # from `set`


def _with(**changes) -> dict:  # noqa: ANN003
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        if "__" in key:
            outer, inner = key.split("__")
            raw[outer] = {**raw[outer], inner.replace("_DOT_", "."): value}
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize(
    "raw, message",
    [
        (_with(space__model_DOT_nope={"uniform": [0, 1]}), "unknown config key 'model.nope'"),
        (_with(space__model_DOT_beta={"uniform": [0.9, 0.1]}), "empty range [0.9, 0.1]"),
        (_with(space__model_DOT_beta={"uniform": [0.5, 0.5]}), "empty range"),
        (_with(space__model_DOT_k_corr={"choice": []}), "choice needs a non-empty list"),
        (_with(space__model_DOT_beta={"normal": [0.5, 0.1]}), "unsupported distribution 'normal'"),
        (_with(space__model_DOT_gamma={"loguniform": [0.0, 1.0]}), "loguniform needs low > 0"),
        (_with(space__model_DOT_k_corr={"randint": [1.5, 4]}), "randint needs integer bounds"),
        (_with(space__model_DOT_k_corr={"choice": ["ten"]}), "config key 'model.k_corr': expected an integer"),
        (_with(space__model_DOT_fusion={"choice": ["residual", "bogus"]}), "model.fusion must be"),
        (_with(scheduler={"type": "asha", "grace_period": 10, "max_t": 5, "reduction_factor": 2}),
         "scheduler.max_t (5) is below its grace_period (10)"),
        (_with(scheduler={"type": "hyperband"}), "scheduler.type 'hyperband' is not supported"),
        (_with(scheduler={"grace": 1}), "scheduler: unknown key 'grace'"),
        (_with(metric="test_recall@20"), "is not a validation metric"),
        (_with(metric="valid_auc@20"), "is not one the trials report"),
        (_with(metric="valid_recall@50"), "train.stop_metric must be one of"),
        (_with(search="bayesopt"), "search 'bayesopt' is not supported"),
        (_with(mode="min"), "mode must be max"),
        (_with(samples=0), "samples must be a positive integer"),
        (_with(workers_per_trial=-1), "workers_per_trial must be >= 0"),
        (_with(space={}), "space a non-empty mapping"),
        (_with(bogus=1), "unknown key 'bogus'"),
        (_with(set={"model.nope": 1}), "unknown config key 'model.nope'"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_sweep_files_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        spec_from_dict(raw, "sweep.yaml")
    assert message in str(e.value) and str(e.value).startswith("sweep.yaml: ")


def test_selection_reads_only_the_validation_metric() -> None:
    """Trial b has the better test metrics and trial a the better validation metric: a wins.
    Asking to select by a test metric is refused outright."""
    rows = [
        {"trial": "a", "status": "TERMINATED", "valid_recall@20": 0.30, "test_recall@20": 0.10},
        {"trial": "b", "status": "TERMINATED", "valid_recall@20": 0.29, "test_recall@20": 0.90},
        {"trial": "c", "status": "ERROR", "valid_recall@20": 0.99, "test_recall@20": 0.99},
        {"trial": "d", "status": "TERMINATED", "valid_recall@20": None},
    ]
    assert select_best(rows, "valid_recall@20")["trial"] == "a"
    with pytest.raises(SlifmrError, match="only validation metrics"):
        select_best(rows, "test_recall@20")


def test_importance_ranks_the_parameter_that_drives_the_metric() -> None:
    rows = [{"x": float(i), "noise": (i * 7) % 5, "flag": i % 2 == 0, "m": i * 0.1} for i in range(10)]
    imp = importance(rows, ["x", "noise", "flag"], "m")
    assert imp["x"] == pytest.approx(1.0) and imp["x"] > imp["noise"] and imp["x"] > imp["flag"]


@pytest.mark.parametrize("topk, metric", [([5, 10], "valid_recall@10"), ([50], "valid_ndcg@50")])
def test_sweep_outputs_use_the_metric_the_trials_report(topk: list[int], metric: str, tmp_path: Path) -> None:
    """A sweep whose trials have no @20 (train.topk without 20) still writes trials.md and
    sweep.png, naming the test metrics at the sweep metric's K."""
    from slifmr.tune.results import write_sweep_outputs

    k = metric.rpartition("@")[2]
    names = [f"{m}@{c}" for c in topk for m in ("recall", "ndcg")]
    rows = [{"trial": f"t{i}", "status": "TERMINATED", "epochs": 2, "best_epoch": 1, "stopped_early": False,
             "model.lr": lr, **{f"valid_{n}": 0.1 * (i + 1) for n in names}} for i, lr in enumerate((0.01, 0.001, 0.1))]
    best = {"trial": "t2", "params": {"model.lr": 0.1}, "best_epoch": 1,
            "valid": {n: 0.3 for n in names}, "test": {n: 0.25 for n in names}}
    summary = {"seconds": 1.0, "trials": 3, "stopped_by_asha": 0, "errored": 0, "metric": metric}
    write_sweep_outputs(tmp_path, rows, ["model.lr"], metric, best, summary)
    md = (tmp_path / "trials.md").read_text()
    assert f"test Recall@{k} 0.2500, NDCG@{k} 0.2500" in md and "@20" not in md
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_ray_train_keeps_the_checkpoint_of_the_runs_own_stop_metric(tmp_path: Path) -> None:
    from slifmr.config import load_config
    from slifmr.launch import make_trainer

    cfg = load_config(None, "mf", settings=[("train.topk", [5, 10]), ("train.stop_metric", "ndcg@10")])
    trainer = make_trainer(cfg, tmp_path / "run", workers=1)
    assert trainer.run_config.checkpoint_config.checkpoint_score_attribute == "valid_ndcg@10"
