"""Issue 15's candidate switches: S(t) as a denoiser of user-item edges, XSimGCL-style
perturbation, learning-rate schedules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slifmr.config import TrainConfig, load_config
from slifmr.model.graphs import denoise_ui_edges
from slifmr.model.views import perturb
from slifmr.training import learning_rate, train_loop


def _corr(pairs: list[tuple[int, int, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric S(t) from (i, j, w) pairs."""
    a = [i for i, j, _ in pairs] + [j for i, j, _ in pairs]
    b = [j for i, j, _ in pairs] + [i for i, j, _ in pairs]
    w = [x for *_, x in pairs] * 2
    return torch.tensor([a, b]), torch.tensor(w)


def test_denoise_drops_the_edges_s_supports_least_per_user() -> None:
    # user 0 saw items 0, 1, 2, 3; S(t) links 0-1 (0.9) and 1-2 (0.5): item 3 has no support,
    # item 0 has 0.9, item 1 has 1.4, item 2 has 0.5. User 1 saw items 3 and 4 (no support).
    edges = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 1, 2, 3, 3, 4]])
    corr = _corr([(0, 1, 0.9), (1, 2, 0.5)])
    kept = denoise_ui_edges(edges, corr, 5, 0.5)  # user 0 loses 2 of 4, user 1 loses 1 of 2
    pairs = sorted(map(tuple, kept.T.tolist()))
    assert pairs[:2] == [(0, 0), (0, 1)] and len(pairs) == 3 and pairs[2] in ((1, 3), (1, 4))  # user 1: a tie
    assert torch.equal(kept, denoise_ui_edges(edges, corr, 5, 0.5))  # ties broken the same way every time
    assert denoise_ui_edges(edges, corr, 5, 0.2).shape[1] == 6  # floor(0.2 * 4) = 0 per user
    assert denoise_ui_edges(edges, None, 5, 0.5) is edges


def test_perturbation_moves_each_row_by_eps() -> None:
    x = torch.randn(7, 5)
    g = torch.Generator().manual_seed(0)
    y = perturb(x, 0.1, g)
    assert torch.allclose((y - x).norm(dim=1), torch.full((7,), 0.1), atol=1e-6)
    assert torch.equal(torch.sign(y - x), torch.sign(x))  # the noise keeps each entry's sign (SimGCL)


def test_learning_rate_schedules_depend_on_the_epoch_alone() -> None:
    t = TrainConfig(lr=0.01, epochs=10)
    assert [learning_rate(t, e) for e in (1, 5)] == [0.01, 0.01]
    t.lr_schedule = "cosine"
    assert learning_rate(t, 1) == pytest.approx(0.01) and learning_rate(t, 6) == pytest.approx(0.005)
    assert learning_rate(t, 11) == pytest.approx(0.0, abs=1e-12)
    t.lr_schedule, t.lr_gamma = "exponential", 0.5
    assert learning_rate(t, 3) == pytest.approx(0.0025)


def test_candidates_train_and_resume_as_one_run(tiny_path: Path, tmp_path: Path) -> None:
    """The three switches together: training runs, the epoch's learning rate reaches the
    optimizer, and a resumed run equals an uninterrupted one (noise from the epoch's generator,
    denoising from S(t), the schedule from the epoch)."""
    over = ["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", "train.batch_size=128", "train.patience=50",
            "model.ui_denoise=0.3", "model.perturb_eps=0.1", "train.lr_schedule=exponential", "train.lr_gamma=0.5"]

    def cfg(epochs: int):  # noqa: ANN202
        c = load_config(overrides=[*over, f"train.epochs={epochs}"])
        c.data = str(tiny_path)
        return c

    full = train_loop(cfg(4), tmp_path / "full")
    train_loop(cfg(2), tmp_path / "part")
    resumed = train_loop(cfg(4), tmp_path / "part", resume=True)
    assert resumed["test"] == full["test"]
    plain = load_config(overrides=[o for o in over if not o.startswith(("model.ui_denoise", "model.perturb"))] + ["train.epochs=4"])
    plain.data = str(tiny_path)
    assert train_loop(plain, tmp_path / "plain")["test"] != full["test"]  # the switches change the run
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]["loss"]) for r in lines)
    state = torch.load(tmp_path / "full" / "checkpoint" / "state.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 ** 3)  # epoch 4's
