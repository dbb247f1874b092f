from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slifmr.config import load_config
from slifmr.data.format import TRAIN, VALID, read_dataset
from slifmr.errors import SlifmrError
from slifmr.training import train_loop

SMALL = ["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", "train.batch_size=128", "train.patience=3"]


def _cfg(tiny_path: Path, epochs: int = 4, extra: list[str] | None = None):  # noqa: ANN202
    cfg = load_config(overrides=[*SMALL, f"train.epochs={epochs}", *(extra or [])])
    cfg.data = str(tiny_path)
    return cfg


def test_same_seed_same_metrics_and_run_folder(tiny_path: Path, tmp_path: Path) -> None:
    a = train_loop(_cfg(tiny_path), tmp_path / "a")
    b = train_loop(_cfg(tiny_path), tmp_path / "b")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    run = tmp_path / "a"
    assert {"config.yaml", "metrics.jsonl", "checkpoint", "best", "results.json"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, len(lines) + 1))
    assert lines[1]["fused"] and not lines[0]["fused"]  # warm-up epoch 1, fusion from epoch 2
    assert json.loads((run / "results.json").read_text())["best_epoch"] == max(lines, key=lambda r: r["valid"]["recall@20"])["epoch"]


def test_resume_equals_uninterrupted(tiny_path: Path, tmp_path: Path) -> None:
    full = train_loop(_cfg(tiny_path, 5, ["train.patience=50"]), tmp_path / "full")
    train_loop(_cfg(tiny_path, 3, ["train.patience=50"]), tmp_path / "part")
    resumed = train_loop(_cfg(tiny_path, 5, ["train.patience=50"]), tmp_path / "part", resume=True)
    assert resumed["test"] == full["test"]
    a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    strip = lambda ln: {k: v for k, v in json.loads(ln).items() if not k.endswith("seconds")}  # noqa: E731
    assert [strip(x) for x in a] == [strip(x) for x in b]


def test_resume_refuses_another_config_or_dataset(tiny_path: Path, tmp_path: Path) -> None:
    train_loop(_cfg(tiny_path, 1), tmp_path / "r")
    with pytest.raises(SlifmrError, match=r"different config \(differs in: model.k_corr\)"):
        train_loop(_cfg(tiny_path, 2, ["model.k_corr=5"]), tmp_path / "r", resume=True)
    from conftest import tiny

    from slifmr.data.format import write_dataset

    other = write_dataset(tiny(seed=9), tmp_path / "other")
    cfg = _cfg(tiny_path, 2)
    cfg.data = str(other)
    with pytest.raises(SlifmrError, match="changed since .* was trained"):
        train_loop(cfg, tmp_path / "r", resume=True)


def test_early_stopping_stops_after_patience(tiny_path: Path, tmp_path: Path) -> None:
    r = train_loop(_cfg(tiny_path, 60, ["train.patience=2", "train.lr=0.05"]), tmp_path / "es")
    assert r["epochs_run"] == r["best_epoch"] + 2 < 60


def test_checkpoint_holds_the_full_state(tiny_path: Path, tmp_path: Path) -> None:
    train_loop(_cfg(tiny_path, 2), tmp_path / "c")
    state = torch.load(tmp_path / "c/checkpoint/state.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "early_stopping", "rng", "last_z", "corr"} <= set(state)
    assert state["epoch"] == 2 and state["last_z"].shape == (read_dataset(tiny_path).num_items, 16)


def test_ml100k_quality_beats_popularity(ml100k_path: Path, tmp_path: Path) -> None:
    """A few LightGCN epochs on the embedded data must beat the most-popular ranking."""
    ds = read_dataset(ml100k_path)
    cfg = load_config(variant="lightgcn", overrides=["train.epochs=6"])
    cfg.data = str(ml100k_path)
    r = train_loop(cfg, tmp_path / "ml", ds=ds)
    from slifmr.evaluation import Evaluator

    pop = torch.from_numpy(np.bincount(ds.item[ds.split == TRAIN], minlength=ds.num_items)).float()
    popular = Evaluator(ds, [20]).evaluate(lambda u: pop.expand(u.numel(), -1), VALID)
    assert r["valid"]["recall@20"] > popular["recall@20"] + 0.03


def test_half_written_checkpoint_falls_back_to_previous(tiny_path: Path, tmp_path: Path) -> None:
    from slifmr.distributed.checkpoint import load_checkpoint

    train_loop(_cfg(tiny_path, 2), tmp_path / "c")
    ck = tmp_path / "c" / "checkpoint"
    shutil.rmtree(ck)  # a crash between the two renames: only checkpoint.prev (epoch 1) is left
    state, meta = load_checkpoint(ck)
    assert meta["epoch"] == 1
