"""Peer baselines in the same harness (issue 15): mf, freedom and ease variants, and the
sampled-softmax loss switch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import graphs_at

from slifmr.cli import main
from slifmr.config import load_config
from slifmr.data.format import TRAIN, Dataset
from slifmr.errors import ConfigError, SlifmrError
from slifmr.model.ease import EASE, ease_weights, gram
from slifmr.model.losses import softmax_loss
from slifmr.model.propagate import FullGraph
from slifmr.training import build_model, train_loop

SMALL = ["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.batch_size=256"]


def test_ease_weights_are_steck_closed_form() -> None:
    """B = argmin ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0 (Steck 2019, eq. 8), checked
    against the KKT solution computed independently in numpy."""
    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=np.float64)
    ds = Dataset(name="x", num_users=5, num_items=4, user=np.nonzero(x)[0], item=np.nonzero(x)[1],
                 split=np.zeros(int(x.sum()), np.int8))
    l2 = 0.7
    b = ease_weights(gram(ds), l2).double().numpy()
    g = x.T @ x + l2 * np.eye(4)
    for j in range(4):  # column j: minimise over b_j with b_jj = 0, a ridge regression on the other columns
        others = [i for i in range(4) if i != j]
        expected = np.linalg.solve(g[np.ix_(others, others)], (x.T @ x)[others, j])
        np.testing.assert_allclose(b[others, j], expected, rtol=1e-5)
        assert b[j, j] == 0


@pytest.mark.parametrize("variant", ["ease", "cooc_ridge"])
def test_closed_form_run_picks_l2_on_validation_and_serves(variant: str, tiny_path: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / variant
    assert main(["-q", "train", "--variant", variant, "--data", str(tiny_path), "--out", str(run),
                 "--set", "model.ease_l2=1,10,100"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["l2"] for r in records] == [1.0, 10.0, 100.0]
    results = json.loads((run / "results.json").read_text())
    best = max(records, key=lambda r: r["valid"]["recall@20"])
    assert results["best_epoch"] == best["epoch"] and results["valid"] == pytest.approx(best["valid"])
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == pytest.approx(results["test"])
    assert main(["recommend", str(run), "--users", "0", "--k", "5"]) == 0
    assert capsys.readouterr().out.count(". item") == 5


def test_ease_refuses_what_does_not_apply(tiny_ds: Dataset, tmp_path: Path) -> None:
    from slifmr.distributed.collectives import Comm

    with pytest.raises(ConfigError, match="variant ease is a closed form"):
        load_config(variant="ease", overrides=["train.sampling=neighbor"])
    with pytest.raises(SlifmrError, match="--workers 0"):
        train_loop(load_config(variant="ease"), tmp_path / "r", Comm(rank=0, world_size=2), ds=tiny_ds)
    with pytest.raises(ConfigError, match="model.ease_l2"):
        load_config(variant="ease", overrides=["model.ease_l2=0,10"])


def test_cooccurrence_neighbours_are_the_most_co_occurring_items() -> None:
    """Each item's k largest counts of X^T X off the diagonal, ties by the smaller id; an item
    with fewer co-occurring items is filled with the most popular others."""
    from slifmr.model.cooc_ridge import cooccurrence_neighbours

    rng = np.random.default_rng(0)
    x = (rng.random((60, 25)) < 0.15).astype(np.int64)
    x[:, 24] = 0
    x[0, 24] = 1  # item 24 co-occurs with user 0's other items only
    u, i = np.nonzero(x)
    k = 6
    nbrs = cooccurrence_neighbours(torch.from_numpy(np.stack([u, i])), 60, 25, k).numpy()
    g = x.T @ x
    degree = x.sum(0)
    popular = sorted(range(25), key=lambda a: (-degree[a], a))
    for j in range(25):
        ranked = sorted((a for a in range(25) if a != j and g[j, a] > 0), key=lambda a: (-g[j, a], a))[:k]
        ranked += [a for a in popular if a != j and a not in ranked][: k - len(ranked)]
        assert nbrs[j].tolist() == ranked


def test_cooc_ridge_with_every_other_item_is_ease(tiny_ds: Dataset) -> None:
    """With k = N - 1 every item's neighbourhood is all the others: the peer is EASE."""
    from slifmr.model.cooc_ridge import CoocRidge

    model = CoocRidge(tiny_ds, tiny_ds.num_items)
    model.fit(10.0)
    users = torch.arange(tiny_ds.num_users)
    ease = EASE(tiny_ds, ease_weights(gram(tiny_ds), 10.0))
    torch.testing.assert_close(model.full_scores(users), ease.full_scores(users), rtol=1e-4, atol=1e-4)


def test_ease_scores_are_interactions_times_weights(tiny_ds: Dataset) -> None:
    model = EASE(tiny_ds, ease_weights(gram(tiny_ds), 10.0))
    x = np.zeros((tiny_ds.num_users, tiny_ds.num_items), np.float32)
    u, i = tiny_ds.edges(TRAIN)
    x[u, i] = 1
    users = torch.tensor([0, 3, 7])
    torch.testing.assert_close(model.full_scores(users), torch.from_numpy(x[[0, 3, 7]]) @ model.weights)


def test_mf_scores_are_embedding_dot_products(tiny_ds: Dataset) -> None:
    cfg = load_config(variant="mf", overrides=SMALL)
    model, static = build_model(cfg, tiny_ds)
    reps = model.representations(graphs_at(model, static, cfg.model, 1))
    users = torch.arange(5)
    expected = model.user_emb.weight[users] @ model.item_emb.weight.T
    torch.testing.assert_close(reps.full_scores(users), expected.detach())
    assert not model.use_kg and not model.use_mm


def test_freedom_adds_the_item_graph_over_id_embeddings(tiny_ds: Dataset) -> None:
    """FREEDOM: h_i = LightGCN(A pruned)_i + (A_mm item_emb)_i, no feature projection, no
    normalisation, no KG, no self-loop; 80% of the user-item edges pruned for training."""
    cfg = load_config(variant="freedom", overrides=["model.embedding_dim=8"])
    model, static = build_model(cfg, tiny_ds)
    graphs = graphs_at(model, static, cfg.model, 1)
    assert len(model.mm.proj) == 0 and not model.use_kg and model.use_mm
    users, z, views = model.encode(FullGraph(graphs, training=False))
    torch.testing.assert_close(z, views["cf"] + torch.sparse.mm(graphs.mm_adj, model.item_emb.weight))
    assert graphs.train_adj._nnz() < graphs.rank_adj._nnz()  # the pruned training graph
    assert cfg.model.edge_dropout == 0.8 and cfg.model.k_mm == 10 and cfg.model.loss == "bpr"


def test_softmax_loss_masks_copies_of_the_positive() -> None:
    torch.manual_seed(0)
    u, p, n = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    pos_ids, neg_ids = torch.tensor([1, 2, 1, 3]), torch.tensor([5, 6, 7, 2])
    got = softmax_loss(u, p, n, 0.5, pos_ids, neg_ids)
    logits = F.normalize(u, dim=1) @ F.normalize(torch.cat([p, n]), dim=1).T / 0.5
    ids = torch.cat([pos_ids, neg_ids])
    expected = 0.0
    for b in range(4):
        keep = [j for j in range(8) if j == b or ids[j] != pos_ids[b]]
        expected += -torch.log_softmax(logits[b, keep], 0)[keep.index(b)] / 4
    torch.testing.assert_close(got, expected)


def test_softmax_loss_trains_and_ranks_by_cosine(tiny_path: Path, tmp_path: Path) -> None:
    cfg = load_config(overrides=[*SMALL, "train.epochs=2", "model.loss=softmax"])
    cfg.data = str(tiny_path)
    r = train_loop(cfg, tmp_path / "sm")
    records = [json.loads(x) for x in (tmp_path / "sm" / "metrics.jsonl").read_text().splitlines()]
    assert "softmax" in records[0]["loss"] and "bpr" not in records[0]["loss"]
    assert 0 < r["valid"]["recall@20"] <= 1


def test_ials_chooses_alpha_and_reg_on_validation_and_scores_with_implicits_factors(
        tiny_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Variant ials fits implicit's iALS for every (alpha, reg) pair, keeps the best by validation
    (one metrics line each) and ranks with U V^T of the kept fit, as implicit itself would."""
    from implicit.cpu.als import AlternatingLeastSquares

    from slifmr.data.format import read_dataset
    from slifmr.model.ials import IALS

    run = tmp_path / "ials"
    assert main(["-q", "train", "--variant", "ials", "--data", str(tiny_path), "--out", str(run),
                 "--set", "model.ials_alpha=1,10", "--set", "model.ials_reg=0.1,10", "--set", "model.embedding_dim=8"]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["alpha"], r["l2"]) for r in records] == [(1.0, 0.1), (1.0, 10.0), (10.0, 0.1), (10.0, 10.0)]
    results = json.loads((run / "results.json").read_text())
    best = max(records, key=lambda r: r["valid"]["recall@20"])
    assert results["best_epoch"] == best["epoch"]
    ds = read_dataset(tiny_path)
    model = IALS(ds, 8, seed=0)
    model.fit(alpha=best["alpha"], reg=best["l2"])
    als = AlternatingLeastSquares(factors=8, regularization=best["l2"], alpha=best["alpha"], random_state=0)
    als.fit(model._x, show_progress=False)
    users = torch.arange(ds.num_users)
    torch.testing.assert_close(model.full_scores(users), torch.from_numpy(als.user_factors @ als.item_factors.T))
    capsys.readouterr()
    assert main(["recommend", str(run), "--users", "0", "--k", "5"]) == 0
    assert capsys.readouterr().out.count(". item") == 5
    with pytest.raises(ConfigError, match="model.ials_reg"):
        load_config(variant="ials", overrides=["model.ials_reg=0"])
