"""Non-finite training stops at once, with one line, and saves nothing non-finite (issue 12,
kind 2): a NaN loss part, an infinite gradient, extreme features, an infinite learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from slifmr.cli import main
from slifmr.config import load_config
from slifmr.distributed.checkpoint import CheckpointError, save_checkpoint
from slifmr.errors import ConfigError, NonFiniteError
from slifmr.model.slifmr import SLIFMR
from slifmr.training import train_loop

SMALL = ["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.batch_size=256", "train.epochs=3"]


def test_extreme_features_stop_training_at_the_first_step(tmp_path: Path) -> None:
    """Case 04's input reaches training when the dataset is built in memory (the importer and
    the reader refuse it): the first step's loss is NaN and nothing is written."""
    ds = tiny()
    ds.features["image"][3] = 3e38
    ds.features["image"][4] = -3e38
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 1: (loss part '\w+' is (nan|inf)|a gradient is not finite)"):
        train_loop(load_config(overrides=SMALL), tmp_path / "run", ds=ds)
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "best").exists()
    assert not (tmp_path / "run" / "results.json").exists()


def _nan_from_epoch(epoch: int, part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from slifmr.training.self_loop import SelfLoop

    build_graphs, forward, current = SelfLoop.graphs_for, SLIFMR.forward, {}

    def record_epoch(self, model, e, *args):  # noqa: ANN001, ANN002, ANN202
        current["epoch"] = e
        return build_graphs(self, model, e, *args)

    def poisoned(self, batch):  # noqa: ANN001, ANN202
        parts = forward(self, batch)
        if current["epoch"] >= epoch:
            parts[part] = parts[part] * float("nan")
            parts["loss"] = sum(v for k, v in parts.items() if k != "loss")
        return parts

    monkeypatch.setattr(SelfLoop, "graphs_for", record_epoch)
    monkeypatch.setattr(SLIFMR, "forward", poisoned)


def test_nan_in_a_later_epoch_keeps_the_last_good_checkpoint(tiny_path: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    _nan_from_epoch(3, "sc", monkeypatch)
    run = tmp_path / "run"
    code = main(["train", "--data", str(tiny_path), "--out", str(run), *sum((["--set", s] for s in SMALL), [])])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert code == 2
    assert len(err) == 1 and "epoch 3, step 1: loss part 'sc' is nan" in err[0], err
    assert "last good checkpoint (epoch 2)" in err[0] and f"slifmr train --resume {run}" in err[0]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["epoch"] == 2
    assert not (run / "results.json").exists()
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_infinite_gradient_is_caught_before_the_update(tiny_path: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A finite loss whose gradient overflows: no parameter is updated with it."""
    loss = SLIFMR.forward

    def steep(self, batch):  # noqa: ANN001, ANN202
        parts = loss(self, batch)
        parts["loss"] = parts["loss"] + 0.0 * self.user_emb.weight.sum() * torch.tensor(float("inf"))
        return parts

    monkeypatch.setattr(SLIFMR, "forward", steep)
    cfg = load_config(overrides=SMALL)
    cfg.data = str(tiny_path)
    with pytest.raises(NonFiniteError, match="epoch 1, step 1"):
        train_loop(cfg, tmp_path / "run")


def test_infinite_loss_with_finite_gradients_is_not_applied(tiny_path: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A loss can be inf while every gradient is finite: the step is refused all the same,
    before the update."""
    loss = SLIFMR.forward
    seen: dict[str, torch.Tensor] = {}

    def inf_offset(self, batch):  # noqa: ANN001, ANN202
        seen.setdefault("before", self.user_emb.weight.detach().clone())
        parts = loss(self, batch)
        parts["loss"] = parts["loss"] + float("inf")
        return parts

    monkeypatch.setattr(SLIFMR, "forward", inf_offset)
    cfg = load_config(overrides=SMALL)
    cfg.data = str(tiny_path)
    captured = {}
    step = __import__("slifmr.distributed.strategy", fromlist=["DDPStrategy"]).DDPStrategy.step

    def spy(self, l):  # noqa: ANN001, ANN202, E741
        applied = step(self, l)
        captured["after"] = self.params[0].detach().clone()
        captured["applied"] = applied
        return applied

    monkeypatch.setattr("slifmr.distributed.strategy.DDPStrategy.step", spy)
    with pytest.raises(NonFiniteError, match="epoch 1, step 1: loss part 'loss' is inf"):
        train_loop(cfg, tmp_path / "run")
    assert captured["applied"] is False
    torch.testing.assert_close(captured["after"], seen["before"])  # user_emb is the first parameter


def test_checkpoints_refuse_non_finite_state(tmp_path: Path) -> None:
    good = {"model": {"w": torch.ones(3)}}
    save_checkpoint(tmp_path / "ck", good, {"epoch": 1})
    with pytest.raises(CheckpointError, match=r"model\.w is not finite"):
        save_checkpoint(tmp_path / "ck", {"model": {"w": torch.tensor([1.0, np.inf])}}, {"epoch": 2})
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["epoch"] == 1


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "model.gamma=-inf", "model.lambda_sc=nan",
                                      "model.tau=inf", "train.weight_decay=-1", "model.alpha_mm=nan"])
def test_non_finite_config_values_are_refused(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(overrides=[override])
