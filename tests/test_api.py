"""The Python API (issue 17, part 4): what a notebook does, on the tiny dataset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import slifmr
from slifmr.errors import ConfigError, SlifmrError


def test_train_load_evaluate_recommend(tiny_path: Path, tmp_path: Path) -> None:
    run = slifmr.train(data=tiny_path, variant="slifmr", out=tmp_path / "run", epochs=2, embedding_dim=8, k_corr=3,
                       model__k_mm=3, ridge_k=5)
    assert run.config.model.k_corr == 3 and run.config.model.k_mm == 3 and run.config.train.epochs == 2
    assert len(run.history) == 2 and run.results["best_epoch"] in (1, 2)
    again = slifmr.load_run(tmp_path / "run")
    test = again.evaluate("test")
    for key in ("recall@20", "ndcg@20", "mrr@20", "coverage@20"):
        assert test[key] == pytest.approx(run.results["test"][key], abs=1e-6)
    recs = again.recommend(["0", "3"], k=5)
    assert recs.column_names == ["user", "rank", "item", "score"] and recs.num_rows == 10
    assert recs.column("user").to_pylist()[:5] == ["0"] * 5
    with pytest.raises(SlifmrError, match="unknown user id 'nobody'"):
        again.recommend(["nobody"])
    with pytest.raises(SlifmrError, match="already holds a run"):
        slifmr.train(data=tiny_path, out=tmp_path / "run", epochs=1)


def test_keyword_overrides_name_config_keys() -> None:
    from slifmr.api import config_key

    assert config_key("k_corr") == "model.k_corr" and config_key("lr") == "train.lr"
    assert config_key("model__gamma") == "model.gamma" and config_key("train.epochs") == "train.epochs"
    with pytest.raises(ConfigError, match="not a config key"):
        config_key("learning_rate")


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(SlifmrError, match="is not a run folder"):
        slifmr.load_run(tmp_path)
    assert set(slifmr.__all__) >= {"train", "load_run", "Run"}


@pytest.mark.parametrize("kwargs, message", [
    ({"tracking_uri": "file:/tmp/x"}, "tracking_uri applies to tracker='mlflow' (the tracker is none)"),
    ({"tracker": "tensorboard", "tracking_uri": "file:/tmp/x"}, "(the tracker is tensorboard)"),
    # the command line's rules (slifmr/options.py), spelled as keyword arguments
    ({"fanout": "5,5"}, "fanout applies to sampling neighbor or history only"),
    ({"zero_stage": 1}, "zero_stage applies to strategy='deepspeed' only"),
    ({"strategy": "deepspeed"}, "strategy='deepspeed' needs workers >= 1 (Ray Train)"),
    ({"variant": "ease"}, "epochs do(es) not apply to variant ease"),
    ({"variant": "pop", "workers": 2}, "workers, epochs do(es) not apply to variant pop"),
])
def test_keywords_that_would_have_no_effect_are_refused(kwargs: dict, message: str, tiny_path: Path,
                                                        tmp_path: Path) -> None:
    with pytest.raises(SlifmrError, match=re.escape(message)):
        slifmr.train(data=tiny_path, out=tmp_path / "run", epochs=1, **kwargs)
    assert not (tmp_path / "run").exists()


def test_ranking_saved_at_the_end_is_what_the_rebuilt_best_epoch_ranks(tiny_path: Path, tmp_path: Path) -> None:
    """RUN/ranking (saved once by the trainer) gives the scores the best epoch's rebuilt graphs give,
    so commands that only rank skip the rebuild; without it they rebuild, with the same lists."""
    import shutil

    import torch

    from slifmr.ranking import load_ranking
    from slifmr.run_layout import RANKING
    from slifmr.training import load_best

    run = slifmr.train(data=tiny_path, out=tmp_path / "run", epochs=2, embedding_dim=8, k_corr=3, model__k_mm=3,
                       ridge_k=5)
    assert (tmp_path / "run" / RANKING).is_dir()
    saved, meta = load_ranking(run.path, run.config, run.dataset)
    rebuilt, best_meta = load_best(run.config, run.dataset, run.path)
    assert meta["epoch"] == best_meta["epoch"] and saved.ridge_weight == rebuilt.ridge_weight and saved.has_head
    users = torch.arange(run.dataset.num_users)
    assert torch.equal(saved.full_scores(users), rebuilt.full_scores(users))
    lists = slifmr.load_run(run.path).recommend(["0", "7"], k=5)
    shutil.rmtree(tmp_path / "run" / RANKING)
    assert slifmr.load_run(run.path).recommend(["0", "7"], k=5).equals(lists)


def test_a_missing_extra_fails_before_the_run_folder(tiny_path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed is the `zero` extra: without it --strategy deepspeed says how to install it, in
    one line, before anything is written or Ray is started."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    with pytest.raises(SlifmrError, match=re.escape("pip install 'slifmr[zero]'")):
        slifmr.train(data=tiny_path, out=tmp_path / "run", workers=1, strategy="deepspeed", epochs=1)
    assert not (tmp_path / "run").exists()


def test_option_rules_check_what_was_given() -> None:
    """A tracking URI kept in a saved config does not block a resume that changes the tracker;
    closed forms track, so their tracking keys apply."""
    from slifmr.config import load_config
    from slifmr.options import COMMAND_LINE, PYTHON, check_options

    cfg = load_config(settings=[("train.tracker", "none"), ("train.tracking_uri", "file:/tmp/x")])
    check_options(cfg, ["train.tracker"], COMMAND_LINE)  # the URI came with the saved config
    with pytest.raises(SlifmrError, match="--tracking-uri applies to --tracker mlflow"):
        check_options(cfg, ["train.tracking_uri"], COMMAND_LINE)
    ease = load_config(variant="ease", settings=[("train.tracking_experiment", "peers")])
    check_options(ease, ["train.tracking_experiment", "train.tracker"], PYTHON)
