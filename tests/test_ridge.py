"""The self-loop's item-item ridge head (issue 15): closed form, its EASE limit, the fused
ranking score, and its place in the run folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import evaluated_splits, tiny

from slifmr.config import load_config
from slifmr.data.format import TRAIN
from slifmr.data.graphs import train_edges, training_matrix
from slifmr.distributed.checkpoint import load_checkpoint
from slifmr.model import ridge
from slifmr.model.ease import ease_weights, gram
from slifmr.model.ridge import ridge_scores, ridge_weights
from slifmr.model.slifmr import Representations
from slifmr.training import train_loop


@pytest.mark.parametrize("path", ["run gram", "gram computed here", "small chunks"])
def test_weights_solve_each_items_ridge_regression_on_its_neighbours(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same solution whether G comes once per run (`item_gram`), per block of items (large
    catalogues), or the systems are solved a few at a time."""
    ds = tiny()
    u, i = ds.edges(TRAIN)
    x = np.zeros((ds.num_users, ds.num_items))
    x[u, i] = 1
    nbrs = torch.stack([torch.randperm(ds.num_items - 1, generator=torch.Generator().manual_seed(j))[:5] for j in
                        range(ds.num_items)])
    nbrs = nbrs + (nbrs >= torch.arange(ds.num_items)[:, None]).long()  # never the item itself
    if path == "small chunks":
        monkeypatch.setattr(ridge, "SOLVE_CHUNK", 3)
        monkeypatch.setattr(ridge, "GRAM_BLOCK", 20)  # 3 items per Gram block
    gram = ridge.item_gram(train_edges(ds), ds.num_users, ds.num_items) if path == "run gram" else None
    w = ridge_weights(train_edges(ds), ds.num_users, ds.num_items, nbrs, 3.0, gram).to_dense().double().numpy()
    g = x.T @ x
    for j in range(ds.num_items):
        n = nbrs[j].numpy()
        expected = np.linalg.solve(g[np.ix_(n, n)] + 3.0 * np.eye(5), g[n, j])
        np.testing.assert_allclose(w[j, n], expected, rtol=1e-4, atol=1e-6)
        assert np.count_nonzero(w[j]) <= 5 and w[j, j] == 0


def test_every_other_item_as_neighbours_is_ease() -> None:
    """EASE's zero-diagonal problem splits into one ridge regression per item on all the others
    (Steck 2019): with k = N - 1 the head is EASE."""
    ds = tiny()
    n = ds.num_items
    others = torch.stack([torch.cat([torch.arange(j), torch.arange(j + 1, n)]) for j in range(n)])
    w_t = ridge_weights(train_edges(ds), ds.num_users, n, others, 10.0)
    torch.testing.assert_close(w_t.to_dense().T, ease_weights(gram(ds), 10.0), rtol=1e-4, atol=1e-5)
    users = torch.tensor([0, 5, 9])
    x = training_matrix(ds).to_dense()
    torch.testing.assert_close(ridge_scores(training_matrix(ds), w_t, users), x[users] @ ease_weights(gram(ds), 10.0),
                               rtol=1e-4, atol=1e-5)


def test_ranking_score_standardises_both_parts() -> None:
    ds = tiny()
    g = torch.Generator().manual_seed(0)
    users_emb, items = torch.randn(ds.num_users, 4, generator=g), torch.randn(ds.num_items, 4, generator=g)
    nbrs = torch.stack([torch.tensor([(j + 1) % ds.num_items, (j + 2) % ds.num_items]) for j in range(ds.num_items)])
    w_t = ridge_weights(train_edges(ds), ds.num_users, ds.num_items, nbrs, 1.0)
    users = torch.tensor([1, 2])
    fused = Representations(users_emb, items, False, w_t, training_matrix(ds), 0.5).full_scores(users)

    def z(s: torch.Tensor) -> torch.Tensor:
        return (s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True)

    dot = users_emb[users] @ items.T
    expected = z(dot) + 0.5 * z(training_matrix(ds).to_dense()[users] @ w_t.to_dense().T)
    torch.testing.assert_close(fused, expected)
    assert torch.equal(Representations(users_emb, items, False, w_t, training_matrix(ds), 0.0).full_scores(users), dot)


def test_trained_run_keeps_the_neighbours_and_ranks_with_the_head(tiny_path: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.epochs=3",
                                 "train.batch_size=256", "model.ridge_k=7", "model.ridge_neighbours=z"])
    cfg.data = str(tiny_path)
    results = train_loop(cfg, tmp_path / "run")
    latest, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert latest["neighbours"].shape == (40, 7)  # epoch 3's: a fusion epoch
    best_state, _ = load_checkpoint(tmp_path / "run" / "best")
    assert (best_state["neighbours"] is None) == (results["best_epoch"] == 1)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = lines[results["best_epoch"] - 1]
    # the best checkpoint reproduces the validation metrics its epoch logged, head included
    assert results["valid"]["recall@20"] == best["valid"]["recall@20"]
    assert lines[1]["fused"] and lines[1]["valid"] != lines[0]["valid"]


def test_a_run_saved_before_the_head_existed_keeps_it_off() -> None:
    """A saved config lacking model.ridge_weight was trained without the head: resuming,
    evaluating or serving it must not switch the head on (config.ADDED_KEYS); a user's own
    YAML without the key takes the default."""
    from slifmr.config import Config, from_dict, saved_config

    old = Config().to_dict()
    del old["model"]["ridge_weight"]
    assert saved_config(old).model.ridge_weight == 0.0
    assert from_dict(old).model.ridge_weight == Config().model.ridge_weight > 0
    assert saved_config(Config().to_dict()).model.ridge_weight == Config().model.ridge_weight


def test_no_neighbours_give_an_empty_head() -> None:
    ds = tiny()
    w_t = ridge_weights(train_edges(ds), ds.num_users, ds.num_items, torch.zeros(ds.num_items, 0, dtype=torch.long), 1.0)
    assert w_t.shape == (ds.num_items, ds.num_items) and w_t.values().numel() == 0


def test_blend_is_chosen_on_validation_and_never_reads_test(tiny_path: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every epoch scores the ranking with each weight of model.ridge_blend on validation and
    keeps the best; the best epoch's weight is the one test is read with, once, at the end."""
    from slifmr.data.format import TEST, VALID
    from slifmr.evaluation import Evaluator
    from slifmr.training import choose_blend, load_best

    splits = evaluated_splits(monkeypatch)
    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.epochs=4",
                                 "train.batch_size=256", "model.ridge_k=7", "model.ridge_blend=0,0.5,3",
                                 "model.ridge_neighbours=z"])
    cfg.data = str(tiny_path)
    results = train_loop(cfg, tmp_path / "run")
    assert splits[:-1] == [VALID] * (len(splits) - 1) and splits[-1] == TEST  # test once, last
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "ridge_weight" not in lines[0] and all(ln["ridge_weight"] in (0.0, 0.5, 3.0) for ln in lines[1:])
    from slifmr.data.format import read_dataset

    ds = read_dataset(tiny_path)
    reps, _ = load_best(cfg, ds, tmp_path / "run")
    best = lines[results["best_epoch"] - 1]
    assert results["best_epoch"] > 1  # a fused epoch (the first has no head yet)
    assert reps.ridge_weight == best["ridge_weight"]
    evaluator = Evaluator(ds, cfg.train.topk)
    weight, valid = choose_blend(evaluator, reps, cfg.model.head, "recall@20")
    assert weight == best["ridge_weight"] and valid == pytest.approx(best["valid"])
    each = [evaluator.evaluate(replace(reps, ridge_weight=w).full_scores, VALID)["recall@20"] for w in (0.5, 3.0)]
    alone = evaluator.evaluate(replace(reps, item_ridge=None).full_scores, VALID)["recall@20"]
    assert valid["recall@20"] == pytest.approx(max([alone, *each]))


def test_first_distinct_keeps_each_rows_first_k_values_in_order() -> None:
    rows = torch.tensor([[1, 2, 3, 4, 1, 5], [7, 7, 8, 9, 10, 8], [5, 4, 3, 2, 1, 0]])
    assert ridge.first_distinct(rows, 4).tolist() == [[1, 2, 3, 4], [7, 8, 9, 10], [5, 4, 3, 2]]
    with pytest.raises(ValueError, match="fewer than 5 distinct"):
        ridge.first_distinct(torch.tensor([[1, 1, 2, 2, 3, 3]]), 5)


@pytest.mark.parametrize("kind", ["cooc", "union"])
def test_the_heads_regressors_from_co_occurrence_or_the_union(kind: str, tiny_path: Path, tmp_path: Path) -> None:
    """model.ridge_neighbours: the head regresses on the most co-occurring items (as cooc_ridge)
    or on half of them joined with Z(t-1)'s neighbours; a resumed run rebuilds W from them."""
    from slifmr.data.format import read_dataset
    from slifmr.model.cooc_ridge import cooccurrence_neighbours

    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.epochs=2",
                                 "train.batch_size=256", "model.ridge_k=6", f"model.ridge_neighbours={kind}"])
    cfg.data = str(tiny_path)
    train_loop(cfg, tmp_path / "run")
    latest, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    ds = read_dataset(tiny_path)
    cooc = cooccurrence_neighbours(train_edges(ds), ds.num_users, ds.num_items, 6)
    nbrs = latest["neighbours"]
    assert nbrs.shape == (40, 6) and all(len(set(row)) == 6 for row in nbrs.tolist())
    assert not (nbrs == torch.arange(40)[:, None]).any()  # never the item itself
    if kind == "cooc":
        assert torch.equal(nbrs, cooc.int())
    else:
        assert torch.equal(nbrs[:, :3], cooc[:, :3].int())  # then Z's neighbours fill the rest
        assert not torch.equal(nbrs, cooc.int())


@pytest.mark.parametrize("kind, self_loop", [("z", True), ("union", True), ("cooc", False)])
def test_a_co_occurrence_head_from_the_first_epoch(kind: str, self_loop: bool, tiny_path: Path, tmp_path: Path) -> None:
    """Before the first fusion there is no trained Z to search: the z head waits for it, while a
    cooc or union head regresses on the co-occurring items from epoch 1, and validation blends
    it. The head is part of the self-loop: without the self-loop there is none."""
    from slifmr.data.format import read_dataset
    from slifmr.model.cooc_ridge import cooccurrence_neighbours

    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.epochs=1",
                                 "train.batch_size=256", "model.ridge_k=6", f"model.ridge_neighbours={kind}",
                                 f"model.self_loop={str(self_loop).lower()}"])
    cfg.data = str(tiny_path)
    train_loop(cfg, tmp_path / "run")
    latest, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    if kind == "z" or not self_loop:
        assert latest.get("neighbours") is None and epoch.get("ridge_weight") is None
        return
    ds = read_dataset(tiny_path)
    assert torch.equal(latest["neighbours"], cooccurrence_neighbours(train_edges(ds), ds.num_users, ds.num_items, 6).int())
    assert epoch["ridge_weight"] in cfg.model.ridge_blend + [cfg.model.ridge_weight]


def test_csr_product_equals_torch_and_keeps_no_memory() -> None:
    """The head's sparse x sparse products go through `csr_product`: the same values as
    torch.sparse.mm, without torch's CPU leak (pytorch/pytorch#109445: about 3.3 MB per product
    of this size in torch 2.13, 10 MB per epoch of a run on ml-100k)."""
    import ctypes
    import gc

    import psutil

    from slifmr.model.ridge import csr_product

    gen = torch.Generator().manual_seed(0)
    n, b, k = 1682, 256, 100
    cols = torch.stack([torch.randperm(n, generator=gen)[:k].sort().values for _ in range(n)])
    w = torch.sparse_csr_tensor(torch.arange(0, n * k + 1, k), cols.flatten(), torch.rand(n * k, generator=gen), (n, n))
    x = ((torch.rand(b, n, generator=gen) < 0.06).float()).t().to_sparse_csr()
    assert torch.equal(csr_product(w, x).to_dense(), torch.sparse.mm(w, x).to_dense())
    libc, proc = ctypes.CDLL("libc.so.6"), psutil.Process()
    csr_product(w, x)
    gc.collect()
    libc.malloc_trim(0)
    before = proc.memory_info().rss
    for _ in range(30):  # torch's own product: about 100 MB more here
        csr_product(w, x)
    gc.collect()
    libc.malloc_trim(0)
    assert proc.memory_info().rss - before < 30 * 2**20
