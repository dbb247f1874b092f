from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import graphs_at, tiny

from slifmr.config import ModelConfig, load_config
from slifmr.data.graphs import knn, knn_edges, symmetric_graph
from slifmr.model.graphs import (
    KnowledgeGraph,
    correlation_graph,
    fusion_due,
    to_csr,
    transpose_csr,
    user_item_adjacency,
)
from slifmr.model.propagate import spmm
from slifmr.model.slifmr import TrainingBatch
from slifmr.training import build_model


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


def _model(ds, **cfg):  # noqa: ANN001, ANN003
    """(model, static graphs, model config) as the trainer builds them."""
    from slifmr.config import Config

    mcfg = dataclasses.replace(ModelConfig(embedding_dim=16, k_corr=3, k_mm=3), **cfg)
    model, static = build_model(Config(model=mcfg), ds)
    return model, static, mcfg


def test_self_loop_fuses_s_into_all_three_graphs(tiny_ds) -> None:  # noqa: ANN001
    m, static, cfg = _model(tiny_ds, gamma=0.3, beta=0.25, edge_dropout=0.0)
    g1 = graphs_at(m, static, cfg, 1)
    assert g1.corr is None
    mm_static = dense(g1.mm_adj)
    kg_edges = g1.kg.heads.numel()
    z = m.representations(g1).items
    g2 = graphs_at(m, static, cfg, 2, z, previous=g1)
    corr = g2.corr
    s = torch.zeros(tiny_ds.num_items, tiny_ds.num_items)
    s[corr[0][0], corr[0][1]] = corr[1]
    assert torch.equal(corr[0], correlation_graph(z, 3)[0])
    # multimodal graph: (1 - beta) A_mm + beta S
    torch.testing.assert_close(dense(g2.mm_adj), 0.75 * mm_static + 0.25 * s)
    # KG: S edges joined as correlated_with
    added = g2.kg.heads.numel() - kg_edges
    assert added == corr[0].shape[1]
    assert (g2.kg.relations[kg_edges:] == g2.kg.corr_relation).all()
    # user-item graph: item block holds gamma * S before normalisation
    ui = user_item_adjacency(static.ui_edges, tiny_ds.num_users, tiny_ds.num_items, corr, 0.3)
    torch.testing.assert_close(dense(g2.rank_adj), dense(ui))
    item_block = dense(g2.rank_adj)[tiny_ds.num_users :, tiny_ds.num_users :]
    assert ((item_block > 0) == (s > 0)).all()
    # the values of epoch 1 are untouched: graphs are values, not state
    assert g1.corr is None and torch.equal(dense(g1.mm_adj), mm_static) and g1.kg.heads.numel() == kg_edges


def test_unchanged_s_reuses_the_graphs_built_from_it(tiny_ds) -> None:  # noqa: ANN001
    m, static, cfg = _model(tiny_ds, refresh_every=2, edge_dropout=0.5)
    g2 = graphs_at(m, static, cfg, 2, torch.randn(tiny_ds.num_items, 16))
    g3 = graphs_at(m, static, cfg, 3, torch.randn(tiny_ds.num_items, 16), previous=g2)  # not a fusion epoch
    assert g3.corr is g2.corr and g3.mm_adj is g2.mm_adj and g3.kg is g2.kg and g3.rank_adj is g2.rank_adj
    assert not torch.equal(dense(g3.train_adj), dense(g2.train_adj))  # pruning is redrawn every epoch


def test_graphs_already_on_the_device_are_not_copied(tiny_ds) -> None:  # noqa: ANN001
    """What the training loop keeps on its device (the static graphs, S(t)) is taken as it is, so
    the graphs S(t) alone decides are reused; a device named without an index ("cuda") is the
    current one of its type, as `.to` reads it."""
    from slifmr.model.graphs import on_device, to_device

    m, static, cfg = _model(tiny_ds, refresh_every=2)
    assert static.to("cpu") is static and static.to(torch.device("cpu")) is static and static.kg.to("cpu") is static.kg
    g2 = graphs_at(m, static, cfg, 2, torch.randn(tiny_ds.num_items, 16))
    assert to_device(g2.corr, "cpu") is g2.corr
    t = torch.zeros(1)
    assert on_device(t, "cpu") and not on_device(t, "cuda") and not on_device(t, "cuda:0")


def test_switches_keep_graphs_static() -> None:
    ds = tiny()
    m, static, cfg = _model(ds, fuse_ui=False, fuse_mm=False, fuse_kg=False)
    g1 = graphs_at(m, static, cfg, 1)
    g2 = graphs_at(m, static, cfg, 2, m.representations(g1).items, previous=g1)
    assert g2.corr is not None
    assert torch.equal(dense(g2.rank_adj), dense(g1.rank_adj)) and torch.equal(dense(g2.mm_adj), dense(g1.mm_adj))
    assert g2.kg.heads.numel() == g1.kg.heads.numel()


def test_warmup_and_refresh_interval() -> None:
    cfg = ModelConfig(warmup_epochs=2, refresh_every=3)
    assert [e for e in range(1, 12) if fusion_due(cfg, e)] == [3, 6, 9]
    assert not any(fusion_due(ModelConfig(self_loop=False), e) for e in range(1, 12))


def test_knowledge_graph_maps_items_first_and_adds_inverse() -> None:
    ds = tiny()
    kg = KnowledgeGraph.from_dataset(ds, add_inverse=True)
    assert kg.heads.numel() == 2 * ds.kg.shape[0]
    item, ent = ds.item_entity[0]
    rows = np.flatnonzero(ds.kg[:, 0] == ent)
    if rows.size:
        assert kg.heads[rows[0]] == item  # the linked entity IS the item node
    assert kg.num_nodes == ds.num_items + ds.num_entities - ds.item_entity.shape[0]


def test_kg_drops_entities_in_fewer_triples_but_never_items() -> None:
    ds = tiny(0)
    count = np.bincount(ds.kg[:, [0, 2]].ravel(), minlength=ds.num_entities)
    linked = np.zeros(ds.num_entities, bool)
    linked[ds.item_entity[:, 1]] = True
    dropped = (count < 3) & ~linked
    assert dropped.any() and (~dropped & ~linked).any()  # the filter has something to do
    kg = KnowledgeGraph.from_dataset(ds, add_inverse=False, min_triples=3)
    kept = ~(dropped[ds.kg[:, 0]] | dropped[ds.kg[:, 2]])
    assert kg.heads.numel() == int(kept.sum())
    assert kg.num_nodes == ds.num_items + int((~dropped & ~linked).sum())
    full = KnowledgeGraph.from_dataset(ds, add_inverse=False)
    assert full.num_nodes == ds.num_items + int((~linked).sum())  # min_triples 1 keeps every entity
    # the kept triples are the same triples, renumbered: items keep their node ids
    is_item = kg.heads < ds.num_items
    assert torch.equal(kg.heads[is_item], full.heads[torch.from_numpy(kept)][is_item])


def test_spmm_backward_through_the_stored_transpose_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    ei = torch.stack([torch.randint(0, 7, (30,), generator=g), torch.randint(0, 5, (30,), generator=g)])
    adj = to_csr(ei, torch.rand(30, generator=g), 7, 5)  # not square, not symmetric
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    w = torch.randn(7, 3, generator=g)
    (spmm(adj, transpose_csr(adj), x) * w).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (torch.sparse.mm(adj, x) * w).sum().backward()
    torch.testing.assert_close(ours, x.grad)
    torch.testing.assert_close(transpose_csr(adj).to_dense(), adj.to_dense().T)


def test_to_csr_adds_repeats_and_takes_coalesced_edges_as_they_are() -> None:
    g = torch.Generator().manual_seed(1)
    ei = torch.stack([torch.randint(0, 6, (40,), generator=g), torch.randint(0, 4, (40,), generator=g)])
    w = torch.rand(40, generator=g)
    dense = torch.zeros(6, 4).index_put_((ei[0], ei[1]), w, accumulate=True)
    torch.testing.assert_close(to_csr(ei, w, 6, 4).to_dense(), dense)  # unsorted, with repeats
    coalesced = torch.sparse_coo_tensor(ei, w, (6, 4)).coalesce()
    fast = to_csr(coalesced.indices(), coalesced.values(), 6, 4)  # sorted, unique: no sort
    torch.testing.assert_close(fast.to_dense(), dense)
    assert torch.equal(fast.col_indices(), coalesced.to_sparse_csr().col_indices())
    t = transpose_csr(fast)
    torch.testing.assert_close(t.to_dense(), dense.T)
    # CSR invariant: columns ascending within each row of the transpose
    rows = torch.repeat_interleave(torch.arange(4), t.crow_indices().diff())
    keys = rows * 6 + t.col_indices()
    assert bool((keys[1:] > keys[:-1]).all())


@pytest.mark.parametrize("variant", ["lightgcn", "static", "no_sc", "no_kg", "no_mm", "slifmr"])
def test_variants_train_a_step_and_score(variant: str, tiny_ds) -> None:  # noqa: ANN001
    cfg = load_config(variant=variant, overrides=["model.embedding_dim=16", "model.k_corr=3"])
    m, static = build_model(cfg, tiny_ds)
    graphs = graphs_at(m, static, cfg.model, 1)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    triples = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    parts = m(TrainingBatch.full(graphs, triples, torch.Generator()))
    assert ("sc" in parts) == (cfg.model.lambda_sc > 0)
    parts["loss"].backward()
    opt.step()
    scores = m.representations(graphs).full_scores(torch.tensor([0, 1]))
    assert scores.shape == (2, tiny_ds.num_items) and torch.isfinite(scores).all()
    g2 = graphs_at(m, static, cfg.model, 2, m.representations(graphs).items, previous=graphs)
    assert (g2.corr is not None) == cfg.model.self_loop


def test_missing_kg_and_features_turn_views_off_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from slifmr import log

    ds = tiny(modalities=(), triples=0)
    log.setup()
    log.logger.propagate = True
    try:
        m, static, cfg = _model(ds)
    finally:
        log.logger.propagate = False
    assert not m.use_kg and not m.use_mm and static.kg is None and static.mm is None
    assert "no knowledge graph" in caplog.text and "no modality features" in caplog.text
    g1 = graphs_at(m, static, cfg, 1)
    g2 = graphs_at(m, static, cfg, 2, m.representations(g1).items, previous=g1)
    assert m.representations(g2).full_scores(torch.tensor([0])).shape == (1, ds.num_items)


def test_degree_sensitive_dropout_keeps_share_and_is_seeded() -> None:
    from slifmr.model.graphs import degree_sensitive_dropout

    ui = torch.stack([torch.randint(0, 20, (200,)), torch.randint(0, 30, (200,))])
    a = degree_sensitive_dropout(ui, 20, 30, 0.75, torch.Generator().manual_seed(1))
    b = degree_sensitive_dropout(ui, 20, 30, 0.75, torch.Generator().manual_seed(1))
    assert a.shape[1] == 50 and torch.equal(a, b)


def test_device_follows_the_module_and_frozen_inputs_stay_out_of_checkpoints(tiny_ds) -> None:  # noqa: ANN001
    """The GPU path's plumbing, exercised on the CPU: modality features are buffers that move
    with model.to(device) but are not checkpointed, the epoch's graphs land on the requested
    device, and a batch from the (CPU) sampler is moved to it."""
    cfg = dataclasses.replace(ModelConfig(), embedding_dim=8, k_corr=3, k_mm=3, user_aux=True)
    model, static, cfg = _model(tiny_ds, embedding_dim=8, user_aux=True)
    model.to(torch.device("cpu"))
    assert set(model.features) == set(tiny_ds.features)
    assert {f"feature_{m}" for m in tiny_ds.features} <= {name for name, _ in model.named_buffers()}
    assert not any(k.startswith("feature_") for k in model.state_dict())
    g1 = graphs_at(model, static, cfg, 1)
    g2 = graphs_at(model, static, cfg, 2, torch.randn(tiny_ds.num_items, 8), previous=g1)
    for adj in (g2.train_adj, g2.rank_adj, g2.mm_adj, g2.kg_attention.full, g2.user_item_mean):
        assert adj.device == torch.device("cpu")
    triples = (torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    model(TrainingBatch.full(g2, triples, torch.Generator(), "cpu"))["loss"].backward()
    assert model.representations(g2).full_scores(torch.tensor([0, 1])).shape == (2, tiny_ds.num_items)


def test_kg_attention_is_kgats_per_edge_formula_with_repeated_edges() -> None:
    """The attention from the per-relation layout equals pi(h, r, t) = (W_r e_t)^T tanh(W_r e_h
    + e_r), softmaxed over each head's edges, with an edge repeated under two relations summed
    into one matrix entry (as the COO build coalesced it), in `full`, its item rows' blocks and the
    transposes."""
    from torch_geometric.utils import softmax

    from slifmr.model.views import KGView

    g = torch.Generator().manual_seed(0)
    num_nodes, num_items, e = 12, 5, 60
    heads, tails = torch.randint(0, num_nodes, (e,), generator=g), torch.randint(0, num_nodes, (e,), generator=g)
    relations = torch.randint(0, 3, (e,), generator=g)
    heads, tails = torch.cat([heads, heads[:4]]), torch.cat([tails, tails[:4]])  # same (h, t), another relation
    relations = torch.cat([relations, (relations[:4] + 1) % 3])
    kg = KnowledgeGraph(heads, relations, tails, num_nodes, 3, corr_relation=2)
    view = KGView(3, 8, 1)
    x = torch.randn(num_nodes, 8, generator=g)
    att = view.attention(x, kg, num_items)
    with torch.no_grad():
        w = view.w_r[relations]
        eh, et = torch.bmm(x[heads, None], w).squeeze(1), torch.bmm(x[tails, None], w).squeeze(1)
        ref = softmax((et * torch.tanh(eh + view.relation.weight[relations])).sum(1), heads, num_nodes=num_nodes)
    dense = torch.zeros(num_nodes, num_nodes).index_put_((heads, tails), ref, accumulate=True)
    assert torch.allclose(att.full.to_dense(), dense, atol=1e-6)
    assert torch.allclose(att.full_t.to_dense(), dense.T, atol=1e-6)
    for part, block in (("from_items", dense[:num_items, :num_items]), ("from_entities", dense[:num_items, num_items:])):
        assert torch.allclose(getattr(att, part).to_dense(), block, atol=1e-6)
        assert torch.allclose(getattr(att, part + "_t").to_dense(), block.T, atol=1e-6)
    assert kg.attention_layout(num_items) is kg.attention_layout(num_items)  # built once per KG


def test_a_replaced_kg_builds_its_own_attention_layout() -> None:
    kg = KnowledgeGraph(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([2, 3]), 4, 1, corr_relation=0)
    assert kg.attention_layout(2).full.col.numel() == 2
    more = dataclasses.replace(kg, heads=torch.tensor([0, 1, 1]), relations=torch.tensor([0, 0, 0]),
                               tails=torch.tensor([2, 3, 2]))
    assert more.attention_layout(2).full.col.numel() == 3  # not the first KG's cached layout
