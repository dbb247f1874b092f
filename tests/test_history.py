"""One sampled hop per step over historical embeddings (train.sampling=history, issue 14),
in-process on the tiny dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_neighbor import _batch, _model, assert_seeds_match_full_graph

from slifmr.data.format import Dataset
from slifmr.errors import ConfigError
from slifmr.fanout import KG_TYPES, RATES, SIMILAR, history_fanouts, sampling_fanouts
from slifmr.model.propagate import FullGraph
from slifmr.model.slifmr import TrainingBatch
from slifmr.sampling.history import HistoryGraph, history_batch, record_memory
from slifmr.sampling.neighbor import BatchSubgraphs, to_hetero_data

LAYERS = ("model.kg_layers=2", "model.mm_layers=2")


def _sample(model, graphs, ds: Dataset, spec: str, n: int = 24):  # noqa: ANN001, ANN202 - test helper
    fanouts = sampling_fanouts("history", _train("history", spec).fanout, model.view_layers)
    return BatchSubgraphs(to_hetero_data(graphs), fanouts, 0).sample(*_batch(ds, n), 1, 0)


def _train(sampling: str, fanout: str):  # noqa: ANN202
    from slifmr.config import load_config

    return load_config(overrides=[f"train.sampling={sampling}", f"train.fanout={fanout}"]).train


def test_every_neighbour_with_a_fresh_memory_equals_the_full_graph(tiny_ds: Dataset) -> None:
    """Fan-out -1 and a memory taken from the current weights: every view's output at the
    seeds, and the loss, equal the full graph's (the estimator is exact there)."""
    model, graphs = _model(tiny_ds, *LAYERS)
    memory = record_memory(model, graphs)
    sub = _sample(model, graphs, tiny_ds, "-1")
    assert_seeds_match_full_graph(model, graphs, sub, HistoryGraph(sub, memory, graphs))
    full = model(TrainingBatch.full(graphs, _batch(tiny_ds), torch.Generator()))
    sampled = model(history_batch(sub, memory, graphs, torch.Generator()))
    torch.testing.assert_close(sampled["bpr"], full["bpr"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("neighbour_grad", [True, False])
def test_a_fresh_memory_makes_any_sample_exact(tiny_ds: Dataset, neighbour_grad: bool) -> None:
    """With the memory taken from the current weights every correction term is zero, so even
    one neighbour per node gives the full graph's outputs (the variance-reduction property),
    whether the sampled neighbours' rows are read (LTGNN) or their history is (GAS)."""
    model, graphs = _model(tiny_ds, *LAYERS)
    memory = record_memory(model, graphs)
    sub = _sample(model, graphs, tiny_ds, "1")
    assert_seeds_match_full_graph(model, graphs, sub, HistoryGraph(sub, memory, graphs, neighbour_grad=neighbour_grad),
                                  views=())


def test_a_stale_memory_is_corrected_exactly_at_the_first_hop(tiny_ds: Dataset) -> None:
    """After the tables move, a one-layer CF view with every neighbour sampled is still exact
    (the correction carries the current rows), while the memory alone is not."""
    model, graphs = _model(tiny_ds, "model.ui_layers=1", "model.use_kg=false", "model.use_mm=false")
    memory = record_memory(model, graphs)
    with torch.no_grad():
        model.user_emb.weight.add_(0.1 * torch.randn_like(model.user_emb.weight))
        model.item_emb.weight.add_(0.1 * torch.randn_like(model.item_emb.weight))
    sub = _sample(model, graphs, tiny_ds, "-1")
    users, z, _ = model.encode(HistoryGraph(sub, memory, graphs))
    ref_users, ref_z, _ = model.encode(FullGraph(graphs, training=True))
    torch.testing.assert_close(z, ref_z[sub["item"].n_id[: z.shape[0]]], atol=1e-5, rtol=1e-5)
    stale = memory[("cf", 0)].aggregated[graphs.num_users + sub["item"].n_id[: z.shape[0]]]
    assert not torch.allclose(stale, (ref_z[sub["item"].n_id[: z.shape[0]]] * 2 - model.item_emb.weight[
        sub["item"].n_id[: z.shape[0]]]).detach(), atol=1e-3)


def test_one_hop_fanouts_follow_each_views_edge_types(tiny_ds: Dataset) -> None:
    model, graphs = _model(tiny_ds, *LAYERS)
    sub = _sample(model, graphs, tiny_ds, "3;kg=1;similar=2")
    for et in sub.edge_types:
        assert len(sub[et].num_sampled_edges) == 1  # one hop
        dst = sub[et].edge_index[1]
        if dst.numel():
            most = {RATES[1]: 3, SIMILAR[1]: 2, KG_TYPES[0][1]: 1}.get(et[1], 3)
            assert int(torch.bincount(dst).max()) <= most
    fan = history_fanouts("10,5;kg=5,0", {"cf": 2, "kg": 1})
    assert fan[RATES] == [10] and fan[KG_TYPES[0]] == [5]
    assert history_fanouts("10", {"cf": 0})[RATES] == [0]  # MF: nothing to sample
    with pytest.raises(ConfigError):
        history_fanouts("0", {"cf": 2})


def test_step_touches_only_sampled_rows(tiny_ds: Dataset) -> None:
    from slifmr.distributed.collectives import Comm
    from slifmr.distributed.strategy import DDPStrategy

    model, graphs = _model(tiny_ds, sparse=True)
    memory = record_memory(model, graphs)
    strategy = DDPStrategy(model, 0.01, 0.0, Comm(), model.embedding_tables(), "auto", sparse_tables=True)
    sub = _sample(model, graphs, tiny_ds, "2", n=4)
    seeds = sub["user"].n_id[: sub["user"].num_sampled_nodes[0]]
    for neighbour_grad, reach in ((True, sub["user"].n_id), (False, seeds)):
        before = model.user_emb.weight.detach().clone()
        assert strategy.step(model(history_batch(sub, memory, graphs, torch.Generator(), neighbour_grad=neighbour_grad))["loss"])
        moved = (model.user_emb.weight.detach() != before).any(1)
        allowed = torch.zeros_like(moved)
        allowed[reach] = True
        assert not (moved & ~allowed).any() and moved[seeds].all()
    assert sub["user"].n_id.numel() > seeds.numel()  # the sample reached beyond the seeds


def test_a_sample_cut_to_its_seeds_gives_the_same_seeds_step(tiny_ds: Dataset) -> None:
    """history_grad=seeds: the sampler keeps only edges from seeds (seed_sources_only) and
    numbers no other node; with a stale memory and a fan-out that samples, the loss and every
    table gradient equal those of the whole sample (same draws, same rescaled weights)."""
    model, graphs = _model(tiny_ds, *LAYERS)
    memory = record_memory(model, graphs)
    with torch.no_grad():
        for table in model.embedding_tables():
            table.add_(0.1 * torch.randn(table.shape, generator=torch.Generator().manual_seed(2)))
    fanouts = sampling_fanouts("history", "2", model.view_layers)
    results = []
    for cut in (False, True):
        sub = BatchSubgraphs(to_hetero_data(graphs), fanouts, 0, seed_sources_only=cut).sample(*_batch(tiny_ds, 40), 1, 0)
        model.zero_grad()
        loss = model(history_batch(sub, memory, graphs, torch.Generator().manual_seed(0), neighbour_grad=False))["loss"]
        loss.backward()
        results.append((sub, loss.detach(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}))
    (whole, loss, grads), (cut, cut_loss, cut_grads) = results
    assert all(cut[t].n_id.numel() == cut[t].num_sampled_nodes[0] for t in cut.node_types)  # seeds only
    assert whole["user"].n_id.numel() > whole["user"].num_sampled_nodes[0]
    assert 0 < sum(cut[et].edge_index.shape[1] for et in cut.edge_types) < sum(
        whole[et].edge_index.shape[1] for et in whole.edge_types)
    torch.testing.assert_close(cut_loss, loss)
    assert cut_grads.keys() == grads.keys() and "user_emb.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(cut_grads[name], grad, msg=name)
    with pytest.raises(ValueError):
        BatchSubgraphs(to_hetero_data(graphs), {et: [2, 1] for et in fanouts}, 0, seed_sources_only=True)


def test_history_training_runs_and_resumes_exactly(tmp_path: Path, tiny_path: Path) -> None:
    """Two epochs straight equal one epoch, a resume, and the second (the memory is rebuilt
    from the checkpointed weights, and every 2 steps within an epoch)."""
    from slifmr.config import load_config
    from slifmr.training import train_loop

    over = [f"data={tiny_path}", "train.sampling=history", "train.fanout=3", "model.embedding_dim=8",
            "train.batch_size=64", "train.patience=5", "model.k_corr=3", "model.k_mm=3", "train.history_refresh=2"]
    straight = train_loop(load_config(overrides=[*over, "train.epochs=2"]), tmp_path / "a")
    train_loop(load_config(overrides=[*over, "train.epochs=1"]), tmp_path / "b")
    resumed = train_loop(load_config(overrides=[*over, "train.epochs=2"]), tmp_path / "b", resume=True)
    assert straight["valid"] == resumed["valid"]
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"memory_seconds"' in lines[0]


def test_rowwise_adam_equals_sparse_adam_and_loads_its_state() -> None:
    from slifmr.distributed.rowwise import RowWiseAdam

    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(50, 4, generator=gen))
    mine = torch.nn.Parameter(ref.detach().clone())
    opt_ref, opt_mine = torch.optim.SparseAdam([ref], lr=0.01), RowWiseAdam([mine], lr=0.01)
    for _ in range(4):
        rows = torch.randint(0, 50, (12,), generator=gen)  # repeats: summed, as a lookup's gradient
        values = torch.randn(12, 4, generator=gen)
        for p, opt in ((ref, opt_ref), (mine, opt_mine)):
            p.grad = torch.sparse_coo_tensor(rows[None], values, p.shape)
            opt.step()
    torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-6)
    fresh = RowWiseAdam([torch.nn.Parameter(ref.detach().clone())], lr=0.01)
    fresh.load_state_dict(opt_ref.state_dict())  # checkpoints of either load into the other
    assert fresh.state_dict()["state"][0]["step"] == 4
    with pytest.raises(RuntimeError):
        mine.grad = torch.ones_like(mine)
        opt_mine.step()


def test_mf_trains_with_sampled_steps(tmp_path: Path, tiny_path: Path) -> None:
    """Variant mf has only embedding tables: with sampled steps all of them take the row-wise
    optimizer and there is no dense one (this crashed: 'optimizer got an empty parameter list')."""
    from slifmr.config import load_config
    from slifmr.training import train_loop

    over = [f"data={tiny_path}", "train.sampling=history", "model.embedding_dim=8", "train.batch_size=64"]
    train_loop(load_config(variant="mf", overrides=[*over, "train.epochs=1"]), tmp_path / "mf")
    resumed = train_loop(load_config(variant="mf", overrides=[*over, "train.epochs=2"]), tmp_path / "mf", resume=True)
    assert resumed["epochs_run"] == 2 and resumed["valid"]["recall@20"] > 0
