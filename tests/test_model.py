from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny

from slifmr.config import ModelConfig, load_config
from slifmr.data.graphs import knn, knn_edges, symmetric_graph
from slifmr.model.graphs import KnowledgeGraph, correlation_graph, user_item_adjacency
from slifmr.model.slifmr import SLIFMR


def dense(csr: torch.Tensor) -> torch.Tensor:
    return csr.to_dense()


def test_correlation_graph_is_exact_topk_symmetric_normalised() -> None:
    z = torch.randn(30, 8)
    ei, w = correlation_graph(z, 4)
    ref = symmetric_graph(*knn_edges(*knn(z, 4)), 30)
    assert torch.equal(ei, ref[0]) and torch.allclose(w, ref[1])
    assert not (ei[0] == ei[1]).any()  # no (i, i) edges: the self-loop is over epochs


def test_user_item_adjacency_has_gamma_s_block() -> None:
    ui = torch.tensor([[0, 0, 1], [0, 1, 2]])
    corr = (torch.tensor([[0, 1], [1, 0]]), torch.tensor([0.5, 0.5]))
    a = dense(user_item_adjacency(ui, 2, 3, corr, gamma=0.4))
    raw = torch.zeros(5, 5)
    raw[[0, 0, 1], [2, 3, 4]] = 1
    raw[[2, 3, 4], [0, 0, 1]] = 1
    raw[2, 3] = raw[3, 2] = 0.4 * 0.5
    d = raw.sum(1).pow(-0.5)
    torch.testing.assert_close(a, d[:, None] * raw * d[None, :])


def _model(ds, **cfg) -> SLIFMR:  # noqa: ANN001, ANN003
    torch.manual_seed(0)
    return SLIFMR(ds, dataclasses.replace(ModelConfig(embedding_dim=16, k_corr=3, k_mm=3), **cfg), seed=0)


def test_self_loop_fuses_s_into_all_three_graphs(tiny_ds) -> None:  # noqa: ANN001
    m = _model(tiny_ds, gamma=0.3, beta=0.25, edge_dropout=0.0)
    m.pre_epoch(1, None)
    assert m.corr is None
    mm_static = dense(m.adj_mm).clone()
    kg_edges = m.kg.heads.numel()
    z = m.item_representations()
    m.pre_epoch(2, z)
    assert m.corr_epoch == 2
    s = torch.zeros(tiny_ds.num_items, tiny_ds.num_items)
    s[m.corr[0][0], m.corr[0][1]] = m.corr[1]
    ref_s = correlation_graph(z, 3)
    assert torch.equal(m.corr[0], ref_s[0])
    # multimodal graph: (1 - beta) A_mm + beta S
    torch.testing.assert_close(dense(m.adj_mm), 0.75 * mm_static + 0.25 * s)
    # KG: S edges joined as correlated_with
    added = m.kg.heads.numel() - kg_edges
    assert added == m.corr[0].shape[1]
    assert (m.kg.relations[kg_edges:] == m.kg.corr_relation).all()
    # user-item graph: item block holds gamma * S before normalisation
    ui = user_item_adjacency(m.ui_edges, tiny_ds.num_users, tiny_ds.num_items, m.corr, 0.3)
    torch.testing.assert_close(dense(m.adj_full), dense(ui))
    item_block = dense(m.adj_full)[tiny_ds.num_users :, tiny_ds.num_users :]
    assert ((item_block > 0) == (s > 0)).all()


def test_switches_keep_graphs_static() -> None:
    ds = tiny()
    m = _model(ds, fuse_ui=False, fuse_mm=False, fuse_kg=False)
    m.pre_epoch(1, None)
    before = dense(m.adj_full).clone(), dense(m.adj_mm).clone(), m.kg.heads.numel()
    m.pre_epoch(2, m.item_representations())
    assert m.corr is not None
    assert torch.equal(dense(m.adj_full), before[0]) and torch.equal(dense(m.adj_mm), before[1])
    assert m.kg.heads.numel() == before[2]


def test_warmup_and_refresh_interval() -> None:
    m = _model(tiny(), warmup_epochs=2, refresh_every=3)
    assert [e for e in range(1, 12) if m.fusion_due(e)] == [3, 6, 9]
    assert not any(_model(tiny(), self_loop=False).fusion_due(e) for e in range(1, 12))


def test_knowledge_graph_maps_items_first_and_adds_inverse() -> None:
    ds = tiny()
    kg = KnowledgeGraph.from_dataset(ds, add_inverse=True)
    assert kg.heads.numel() == 2 * ds.kg.shape[0]
    item, ent = ds.item_entity[0]
    rows = np.flatnonzero(ds.kg[:, 0] == ent)
    if rows.size:
        assert kg.heads[rows[0]] == item  # the linked entity IS the item node
    assert kg.num_nodes == ds.num_items + ds.num_entities - ds.item_entity.shape[0]


@pytest.mark.parametrize("variant", ["lightgcn", "static", "no_sc", "no_kg", "no_mm", "slifmr"])
def test_variants_train_a_step_and_score(variant: str, tiny_ds) -> None:  # noqa: ANN001
    cfg = load_config(variant=variant, overrides=["model.embedding_dim=16", "model.k_corr=3"])
    m = SLIFMR(tiny_ds, cfg.model, seed=0)
    m.pre_epoch(1, None)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    batch = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    parts = m.loss(batch)
    assert ("sc" in parts) == (cfg.model.lambda_sc > 0)
    parts["loss"].backward()
    opt.step()
    scores = m.full_scores(torch.tensor([0, 1]))
    assert scores.shape == (2, tiny_ds.num_items) and torch.isfinite(scores).all()
    m.pre_epoch(2, m.item_representations())
    assert (m.corr is not None) == cfg.model.self_loop


def test_missing_kg_and_features_turn_views_off_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from slifmr import log

    ds = tiny(modalities=(), triples=0)
    log.setup()
    log.logger.propagate = True
    try:
        m = _model(ds)
    finally:
        log.logger.propagate = False
    assert not m.use_kg and not m.use_mm
    assert "no knowledge graph" in caplog.text and "no modality features" in caplog.text
    m.pre_epoch(1, None)
    m.pre_epoch(2, m.item_representations())
    assert m.full_scores(torch.tensor([0])).shape == (1, ds.num_items)


def test_degree_sensitive_dropout_keeps_share_and_is_seeded() -> None:
    from slifmr.model.graphs import degree_sensitive_dropout

    ui = torch.stack([torch.randint(0, 20, (200,)), torch.randint(0, 30, (200,))])
    a = degree_sensitive_dropout(ui, 20, 30, 0.75, torch.Generator().manual_seed(1))
    b = degree_sensitive_dropout(ui, 20, 30, 0.75, torch.Generator().manual_seed(1))
    assert a.shape[1] == 50 and torch.equal(a, b)


def test_device_follows_the_module_and_frozen_inputs_stay_out_of_checkpoints(tiny_ds) -> None:  # noqa: ANN001
    """The GPU path's plumbing, exercised on the CPU: modality features are buffers that move
    with model.to(device) but are not checkpointed, graphs land on the model's device, and a
    batch from the (CPU) sampler is moved to it by loss()."""
    cfg = dataclasses.replace(ModelConfig(), embedding_dim=8, k_corr=3, k_mm=3, user_aux=True)
    model = SLIFMR(tiny_ds, cfg).to(torch.device("cpu"))
    assert model.device == torch.device("cpu")
    assert set(model.features) == set(tiny_ds.features)
    moved = {name for name, _ in model.named_buffers()}
    assert {f"feature_{m}" for m in tiny_ds.features} | {"user_item_mean"} <= moved
    assert not any(k.startswith("feature_") or k == "user_item_mean" for k in model.state_dict())
    model.pre_epoch(1, None)
    model.pre_epoch(2, torch.randn(tiny_ds.num_items, 8))
    for adj in (model.adj_train, model.adj_full, model.adj_mm, model.kg_view.att_full):
        assert adj.device == model.device
    batch = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    model.loss(batch)["loss"].backward()
    assert model.full_scores(torch.tensor([0, 1])).shape == (2, tiny_ds.num_items)
