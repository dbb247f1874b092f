"""Neighbor sampling of the heterogeneous graph, the sampled model, layer-wise inference and
the approximate kNN (issue 5), in-process on the tiny dataset."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import graphs_at

from slifmr.config import load_config
from slifmr.data.format import Dataset
from slifmr.errors import ConfigError
from slifmr.fanout import KG_TYPES, RATES, parse_fanout, view_fanouts
from slifmr.model.graphs import EpochGraphs
from slifmr.model.propagate import FullGraph, layerwise_spmm
from slifmr.model.slifmr import SLIFMR, TrainingBatch
from slifmr.sampling.neighbor import (
    BatchSubgraphs,
    HeteroNeighborSampler,
    SampledSubgraph,
    _sample_rows,
    backend,
    csc,
    sampled_batch,
    to_hetero_data,
)
from slifmr.training import build_model


def _model(ds: Dataset, *overrides: str, sparse: bool = False) -> tuple[SLIFMR, EpochGraphs]:
    """The model and epoch 2's graphs (S(t) fused)."""
    cfg = load_config(overrides=["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", *overrides])
    model, static = build_model(cfg, ds, sparse_tables=sparse)
    graphs = graphs_at(model, static, cfg.model, 1)
    z = torch.randn(ds.num_items, 16, generator=torch.Generator().manual_seed(1))
    return model, graphs_at(model, static, cfg.model, 2, z, previous=graphs)


def _batch(ds: Dataset, n: int = 24, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, ds.num_users, (n,), generator=g), torch.randint(0, ds.num_items, (n,), generator=g),
            torch.randint(0, ds.num_items, (n,), generator=g))


def test_sampled_edges_exist_and_fanouts_are_respected(tiny_ds: Dataset) -> None:
    model, graphs = _model(tiny_ds)
    graph = to_hetero_data(graphs)
    fanout = view_fanouts("4,2", model.view_layers)
    sub = BatchSubgraphs(graph, fanout, seed=3).sample(*_batch(tiny_ds), epoch=1, step=0)
    assert backend() == "pytorch"  # this machine has neither pyg-lib nor torch-sparse
    for et in sub.edge_types:
        src, dst = sub[et].edge_index
        e_id = sub[et].e_id
        # every sampled edge is an edge of the epoch graph, between the right global nodes
        full = graph[et].edge_index[:, e_id]
        assert torch.equal(sub[et[0]].n_id[src], full[0]) and torch.equal(sub[et[2]].n_id[dst], full[1])
        assert e_id.unique().numel() == e_id.numel()  # without replacement
        # per hop, each target gets min(fan-out, in-degree) edges of each type
        deg = torch.bincount(graph[et].edge_index[1], minlength=graph[et[2]].num_nodes)
        offset, node_start = 0, 0
        for hop, n_edges in enumerate(sub[et].num_sampled_edges):
            k = fanout[et][hop]
            hop_dst = dst[offset : offset + n_edges]
            n_targets = sub[et[2]].num_sampled_nodes[hop]
            targets = torch.arange(node_start, node_start + n_targets)
            got = torch.bincount(hop_dst, minlength=sub[et[2]].num_nodes)[targets]
            want = deg[sub[et[2]].n_id[targets]]
            want = want.clamp_max(k) if k >= 0 else want
            assert torch.equal(got, want), (et, hop)
            offset += n_edges
            node_start += n_targets
    # the 1-layer KG and MM views are not sampled at hop 2
    assert all(sub[et].num_sampled_edges[1] == 0 for et in KG_TYPES)


def test_sampling_is_seeded(tiny_ds: Dataset) -> None:
    model, graphs = _model(tiny_ds)
    fanout = view_fanouts("3,2", model.view_layers)
    a, b = (BatchSubgraphs(to_hetero_data(graphs), fanout, seed=5) for _ in range(2))
    batch = _batch(tiny_ds)
    x, y, z = a.sample(*batch, 2, 7), b.sample(*batch, 2, 7), a.sample(*batch, 2, 8)
    assert torch.equal(x[RATES].e_id, y[RATES].e_id) and torch.equal(x["item"].n_id, y["item"].n_id)
    assert not torch.equal(x[RATES].e_id, z[RATES].e_id)


def test_uniform_without_replacement_matches_pyg_semantics() -> None:
    """pyg-lib samples min(k, deg) distinct in-edges uniformly: each edge of a node of
    degree deg is taken with probability k / deg. Checked for the random-key (deg <= 4k) and
    the rejection (deg > 4k) paths against that, within 5 binomial standard deviations."""
    k, trials = 3, 4000
    g = torch.Generator().manual_seed(0)
    for deg in (5, 40):
        start = torch.zeros(trials, dtype=torch.long)
        ids, rows = _sample_rows(start, torch.full((trials,), deg), k, g)
        assert ids.numel() == k * trials
        per_row = torch.zeros(trials, deg, dtype=torch.long).index_put_((rows, ids), torch.ones_like(ids), accumulate=True)
        assert per_row.max() == 1 and torch.equal(per_row.sum(1), torch.full((trials,), k))
        p = k / deg
        sd = math.sqrt(trials * p * (1 - p))
        assert (per_row.sum(0).float() - trials * p).abs().max() < 5 * sd


def test_the_samplers_csc_is_pygs_without_a_sort(tiny_ds: Dataset) -> None:
    """The epoch's HeteroData lists every edge type by destination, so the sampler's CSC is read
    off it (no sort, no permutation): the pointers PyG's constructor builds and, per destination,
    the same sources (in the edges' own order, where PyG's unstable sort may shuffle them). An
    edge list in another order is sorted stably by destination."""
    import warnings

    from torch_geometric.sampler import NeighborSampler
    from torch_geometric.sampler.utils import to_csc

    model, graphs = _model(tiny_ds)
    graph = to_hetero_data(graphs)
    fanout = view_fanouts("3,2", model.view_layers)
    ours = HeteroNeighborSampler(graph, fanout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyg = NeighborSampler(graph, fanout)
    assert set(ours.colptr_dict) == set(pyg.colptr_dict) and len(ours.colptr_dict) == len(graph.edge_types)
    for rel in pyg.colptr_dict:
        et = pyg.to_edge_type[rel]
        assert ours.perm[et] is None
        colptr = pyg.colptr_dict[rel]
        assert torch.equal(ours.colptr_dict[rel], colptr)
        assert torch.equal(ours.row_dict[rel], graph[et].edge_index[0])
        for lo, hi in zip(colptr[:-1].tolist(), colptr[1:].tolist(), strict=True):
            assert torch.equal(ours.row_dict[rel][lo:hi], torch.sort(pyg.row_dict[rel][lo:hi]).values)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([torch.randint(0, 9, (40,), generator=g), torch.randint(0, 6, (40,), generator=g)])
    colptr, row, perm = csc(shuffled, 6)
    ref_colptr, _, _ = to_csc(type("Edges", (), {"edge_index": shuffled, "size": lambda self, d: 6})())
    assert perm is not None and torch.equal(colptr, ref_colptr)
    assert torch.equal(shuffled[1, perm], torch.sort(shuffled[1]).values) and torch.equal(row, shuffled[0, perm])
    assert bool((perm[1:] > perm[:-1])[shuffled[1, perm][1:] == shuffled[1, perm][:-1]].all())  # stable


@pytest.mark.skipif(backend() == "pytorch", reason="pyg-lib / torch-sparse not installed (no PyPI wheels)")
def test_native_backend_agrees_in_distribution(tiny_ds: Dataset) -> None:  # pragma: no cover - GPU clusters
    model, graphs = _model(tiny_ds)
    graph = to_hetero_data(graphs)
    fanout = view_fanouts("3,2", model.view_layers)
    sampler = HeteroNeighborSampler(graph, fanout)
    seed = {"user": torch.arange(10), "item": torch.arange(10)}
    counts = []
    for fn in (sampler._sample, sampler._sample_pytorch):  # pyg-lib's, then ours
        n = [sum(fn(seed).num_sampled_edges[RATES]) for _ in range(200)]
        counts.append(sum(n) / len(n))
    assert abs(counts[0] - counts[1]) < 0.05 * counts[0]


def assert_seeds_match_full_graph(model: SLIFMR, graphs: EpochGraphs, sub, graph,  # noqa: ANN001
                                  views: tuple[str, ...] = ("cf", "kg", "mm")) -> None:
    """The seeds' users, fused items and `views` on the sampled propagator `graph` equal the
    full graph's rows."""
    users, z, out = model.encode(graph)
    ref_users, ref_z, ref_views = model.encode(FullGraph(graphs, training=True))
    u_ids, i_ids = sub["user"].n_id[: users.shape[0]], sub["item"].n_id[: z.shape[0]]
    torch.testing.assert_close(users, ref_users[u_ids], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z, ref_z[i_ids], atol=1e-5, rtol=1e-5)
    for name in views:
        torch.testing.assert_close(out[name], ref_views[name][i_ids], atol=1e-5, rtol=1e-5)


def test_full_fanout_equals_full_graph_propagation(tiny_ds: Dataset) -> None:
    model, graphs = _model(tiny_ds, "model.kg_layers=2", "model.mm_layers=2")
    sub = BatchSubgraphs(to_hetero_data(graphs), view_fanouts("-1,-1", model.view_layers), 0).sample(*_batch(tiny_ds), 1, 0)
    assert_seeds_match_full_graph(model, graphs, sub, SampledSubgraph(sub))
    full = model(TrainingBatch.full(graphs, _batch(tiny_ds), torch.Generator()))
    sampled = model(sampled_batch(sub, graphs, torch.Generator()))
    torch.testing.assert_close(sampled["bpr"], full["bpr"], atol=1e-5, rtol=1e-5)


def test_sampled_step_touches_only_the_sampled_rows(tiny_ds: Dataset) -> None:
    """Sparse table gradients + row-wise Adam: a step moves only table rows of the sampled
    subgraph (every seed among them), and the other parameters as dense Adam does."""
    from slifmr.distributed.collectives import Comm
    from slifmr.distributed.strategy import DDPStrategy

    model, graphs = _model(tiny_ds, sparse=True)
    strategy = DDPStrategy(model, 0.01, 0.0, Comm(), model.embedding_tables(), "auto", sparse_tables=True)
    sub = BatchSubgraphs(to_hetero_data(graphs), view_fanouts("2,1", model.view_layers), 0).sample(*_batch(tiny_ds, 4), 1, 0)
    before = model.user_emb.weight.detach().clone()
    proj = model.mm.proj["text"].weight.detach().clone()
    strategy.step(model(sampled_batch(sub, graphs, torch.Generator()))["loss"])
    moved = (model.user_emb.weight.detach() != before).any(1)
    sampled = torch.zeros_like(moved)
    sampled[sub["user"].n_id] = True
    assert not (moved & ~sampled).any() and moved[sub["user"].n_id[: sub["user"].num_sampled_nodes[0]]].all()
    assert moved.sum() < tiny_ds.num_users and not torch.equal(proj, model.mm.proj["text"].weight)
    assert model.user_emb.weight.grad is None or model.user_emb.weight.grad.is_sparse


def test_layerwise_inference_equals_one_pass(tiny_ds: Dataset) -> None:
    model, graphs = _model(tiny_ds)
    ref = model.representations(graphs)
    reps = model.representations(graphs, layerwise_spmm(chunk=7))  # many row blocks
    torch.testing.assert_close(reps.users, ref.users)
    torch.testing.assert_close(reps.items, ref.items)


def test_fanout_spec_errors() -> None:
    layers = {"cf": 2, "kg": 1, "mm": 1}
    assert view_fanouts("10,5;kg=7,7", layers)[KG_TYPES[0]] == [7, 0]
    assert parse_fanout("-1,3", [RATES])[RATES] == [-1, 3]
    for spec, message in (("10", "1 hop"), ("10,x", "integers"), ("kg=1,2", "per-hop default"),
                          ("10,5;images=1,2", "not relation"), ("10,-2", ">= -1"), ("10,5;kg=1", "hops")):
        with pytest.raises(ConfigError, match=message):
            view_fanouts(spec, layers)
    with pytest.raises(ConfigError, match="user_aux"):
        load_config(overrides=["train.sampling=neighbor", "model.user_aux=true"])


def test_approximate_knn_scans_some_lists_reproducibly() -> None:
    """IVF-Flat on clustered rows: 80 lists of which 16 are scanned, a recall near exact, the
    same neighbours on a second build (k-means on one thread, seeded)."""
    from slifmr.distributed.knn import KnnSearch, approx_knn

    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 16, generator=g)[torch.randint(0, 40, (6400,), generator=g)] + 1.0 * torch.randn(6400, 16, generator=g)
    search = KnnSearch(method="approx", check_rows=300)
    nbrs, _ = search(z, 20)
    assert 0.9 < search.recall < 1.0  # approximate, and close
    assert torch.equal(approx_knn(z, 20)[0], nbrs)
    rows = torch.tensor([5, 77, 6399])
    assert torch.equal(approx_knn(z, 20, rows)[0], nbrs[rows])


def test_approximate_knn_recall_is_reported(tiny_ds: Dataset) -> None:
    from slifmr.data.graphs import knn
    from slifmr.distributed.knn import KnnSearch

    z = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    exact = KnnSearch()
    assert torch.equal(exact(z, 5)[0], knn(z, 5)[0]) and exact.recall is None
    approx = KnnSearch(method="approx", check_rows=200)
    nbrs, sims = approx(z, 5)
    assert nbrs.shape == (500, 5) and not (nbrs == torch.arange(500)[:, None]).any()
    assert approx.recall is not None and approx.recall > 0.9  # 12 lists, all scanned: exact
    torch.testing.assert_close(sims, (torch.nn.functional.normalize(z, dim=1)[:, None] *
                                      torch.nn.functional.normalize(z, dim=1)[nbrs]).sum(2), atol=1e-4, rtol=1e-4)


def test_sampled_training_resumes_exactly(tmp_path: Path, tiny_path: Path) -> None:
    """A sampled run (approximate kNN, capped steps, sampled evaluation users) stopped after
    epoch 2 and resumed equals the uninterrupted run: sampling is a function of the position."""
    from slifmr.training import train_loop

    def cfg(epochs: int):  # noqa: ANN202
        c = load_config(overrides=["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", "train.batch_size=128",
                                   "train.sampling=neighbor", "train.fanout=5,3", "model.knn=approx",
                                   "train.steps_per_epoch=2", "train.eval_users=40", f"train.epochs={epochs}",
                                   "train.patience=100"])
        c.data = str(tiny_path)
        return c

    whole = train_loop(cfg(3), tmp_path / "whole")
    train_loop(cfg(2), tmp_path / "part")
    resumed = train_loop(cfg(3), tmp_path / "part", resume=True)
    assert whole["valid"] == resumed["valid"] and whole["test"] == resumed["test"]
    import json

    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in lines] == [2, 2, 2]
    assert all(r["knn_recall"] is not None for r in lines[1:])  # fused from epoch 2 on
