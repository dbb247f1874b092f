"""Collectives, sharded kNN and sharded evaluation on 2 real gloo processes (no Ray)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import graphs_at

from slifmr.data.graphs import knn
from slifmr.distributed.collectives import Comm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn_name: str, out: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = globals()[fn_name](Comm.current(), *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        # both ranks reach teardown together: a rank destroying its group while its peer still
        # talks aborted the peer in gloo's C++ ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_two(fn_name: str, tmp_path: Path, *args) -> list:  # noqa: ANN002
    mp.spawn(_worker, args=(2, _free_port(), fn_name, str(tmp_path), args), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _knn_job(comm: Comm, z: torch.Tensor, k: int) -> tuple:
    from slifmr.distributed.knn import KnnSearch
    from slifmr.model.graphs import correlation_graph

    return correlation_graph(z, k, knn_fn=KnnSearch(comm, "exact", chunk_size=7))


def test_sharded_knn_search_equals_single_process_exact_knn(tmp_path: Path) -> None:
    from slifmr.model.graphs import correlation_graph

    z = torch.randn(101, 12)  # odd: the last shard is padded
    ref_e, ref_w = correlation_graph(z, 5)
    for edges, weights in run_on_two("_knn_job", tmp_path, z, 5):
        assert torch.equal(edges, ref_e)
        torch.testing.assert_close(weights, ref_w)
    assert torch.equal(knn(z, 5)[0], knn(z, 5, chunk_size=3)[0])


def _collectives_job(comm: Comm) -> dict:
    grads = [torch.full((3,), float(comm.rank + 1)), torch.full((2, 2), float(10 * (comm.rank + 1)))]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    comm.average_gradients(params)
    start, stop = comm.shard(5)
    gathered = comm.all_gather_rows(torch.arange(start, stop).float()[:, None], 5)
    return {"grads": [p.grad for p in params], "gathered": gathered, "world": comm.world_size}


def test_gradient_average_and_row_gather(tmp_path: Path) -> None:
    for r in run_on_two("_collectives_job", tmp_path):
        assert r["world"] == 2
        torch.testing.assert_close(r["grads"][0], torch.full((3,), 1.5))
        torch.testing.assert_close(r["grads"][1], torch.full((2, 2), 15.0))
        assert r["gathered"].squeeze(1).tolist() == [0, 1, 2, 3, 4]


def _sparse_rows_job(comm: Comm) -> dict:
    """Embedding-table gradients touching a few rows: sparse, auto and dense averaging agree."""
    out = {}
    for mode in ("dense", "sparse", "auto"):
        table = torch.nn.Parameter(torch.zeros(1000, 4))
        rows = torch.tensor([3, 500, 999]) if comm.rank == 0 else torch.tensor([3, 7])
        table.grad = torch.zeros(1000, 4).index_add_(0, rows, torch.full((rows.numel(), 4), float(comm.rank + 1)))
        other = torch.nn.Parameter(torch.zeros(2))
        other.grad = torch.full((2,), float(comm.rank))
        comm.traffic["bytes"] = 0.0
        comm.average_gradients([table, other], row_sparse=[table], mode=mode)
        out[mode] = {"table": table.grad.clone(), "other": other.grad.clone(), "bytes": comm.traffic["bytes"]}
        # the same as a sparse COO gradient (sampled steps' lookups): averaged, still sparse
        sparse = torch.nn.Parameter(torch.zeros(1000, 4))
        sparse.grad = torch.sparse_coo_tensor(rows[None], torch.full((rows.numel(), 4), float(comm.rank + 1)), (1000, 4))
        comm.average_gradients([sparse], row_sparse=[sparse], mode=mode)
        out[mode]["sparse"] = sparse.grad
    # several tables of different widths exchanged together (one set of collectives)
    wide, narrow = torch.nn.Parameter(torch.zeros(50, 3)), torch.nn.Parameter(torch.zeros(80, 2))
    wide.grad = torch.sparse_coo_tensor(torch.tensor([[comm.rank, 10]]), torch.full((2, 3), float(comm.rank + 1)), (50, 3))
    narrow.grad = torch.sparse_coo_tensor(torch.tensor([[79]]), torch.full((1, 2), float(comm.rank + 1)), (80, 2))
    comm.average_gradients([wide, narrow], row_sparse=[wide, narrow], mode="sparse")
    out["tables"] = (wide.grad.to_dense(), narrow.grad.to_dense())
    return out


def test_sparse_row_gradients_average_like_dense(tmp_path: Path) -> None:
    want = torch.zeros(1000, 4)
    want[3], want[500], want[999], want[7] = 1.5, 0.5, 0.5, 1.0
    for r in run_on_two("_sparse_rows_job", tmp_path):
        for mode in ("dense", "sparse", "auto"):
            torch.testing.assert_close(r[mode]["table"], want)
            torch.testing.assert_close(r[mode]["other"], torch.full((2,), 0.5))
            assert r[mode]["sparse"].is_sparse
            torch.testing.assert_close(r[mode]["sparse"].to_dense(), want)
        assert r["sparse"]["sparse"].coalesce()._nnz() == 4  # rows 3, 7, 500, 999: the padding is not a row
        wide, narrow = r["tables"]
        assert wide[0].tolist() == [0.5] * 3 and wide[1].tolist() == [1.0] * 3 and wide[10].tolist() == [1.5] * 3
        assert narrow[79].tolist() == [1.5, 1.5] and float(wide.abs().sum()) == 9.0
        # 2 ranks x 3 padded rows x (16 B + an 8 B id) + the small dense rest, vs the 16 kB table
        assert r["sparse"]["bytes"] == r["auto"]["bytes"] == 2 * 3 * 24 + 8
        assert r["dense"]["bytes"] == 1000 * 4 * 4 + 8


def _layerwise_job(comm: Comm, data: str) -> dict:
    from slifmr.config import load_config
    from slifmr.data.format import read_dataset
    from slifmr.model.propagate import layerwise_spmm
    from slifmr.training import build_model

    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3"])
    model, static = build_model(cfg, read_dataset(data), comm=comm)  # the frozen kNN graph built sharded
    reps = model.representations(graphs_at(model, static, cfg.model, 1),
                                 layerwise_spmm(chunk=5, sharding=(comm.shard, comm.all_gather_rows)))
    return {"users": reps.users, "z": reps.items, "mm": static.mm}


def test_sharded_layerwise_inference_equals_one_process(tmp_path: Path, tiny_path: Path, tiny_ds) -> None:  # noqa: ANN001
    from slifmr.config import load_config
    from slifmr.training import build_model

    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3"])
    model, static = build_model(cfg, tiny_ds)
    reps = model.representations(graphs_at(model, static, cfg.model, 1))
    for r in run_on_two("_layerwise_job", tmp_path, str(tiny_path)):
        assert torch.equal(r["mm"][0], static.mm[0])
        torch.testing.assert_close(r["users"], reps.users)
        torch.testing.assert_close(r["z"], reps.items)


def _eval_job(comm: Comm, data: str, scores: torch.Tensor) -> dict:
    from slifmr.data.format import TEST, read_dataset
    from slifmr.evaluation import Evaluator
    from slifmr.training.build import user_shard as _user_shard

    ds = read_dataset(data)
    ev = Evaluator(ds, [10, 20], chunk_size=7, users=_user_shard(ds, comm))
    return ev.evaluate(lambda u: scores[u], TEST, comm.all_reduce_sum)


def test_sharded_evaluation_equals_single_process(tmp_path: Path, tiny_path: Path, tiny_ds) -> None:  # noqa: ANN001
    from slifmr.data.format import TEST
    from slifmr.evaluation import Evaluator

    scores = torch.randn(tiny_ds.num_users, tiny_ds.num_items)
    ref = Evaluator(tiny_ds, [10, 20]).evaluate(lambda u: scores[u], TEST)
    for got in run_on_two("_eval_job", tmp_path, str(tiny_path), scores):
        assert got.keys() == ref.keys()
        for k in ref:
            assert abs(got[k] - ref[k]) < 1e-9, k


def test_collectives_are_no_ops_without_a_group() -> None:
    comm = Comm.current()
    assert (comm.rank, comm.world_size) == (0, 1)
    t = torch.ones(3)
    assert comm.all_reduce_sum(t) is t and comm.all_gather_rows(t, 3) is t
    assert os.environ.get("WORLD_SIZE") in (None, "1")


def _train_job(comm: Comm, data: str, out: str, strategy: str, stage: int, epochs: int, resume: bool) -> dict:
    from slifmr.config import load_config
    from slifmr.training import train_loop

    os.environ.update(RANK=str(comm.rank), LOCAL_RANK=str(comm.rank), WORLD_SIZE=str(comm.world_size))
    cfg = load_config(overrides=["model.embedding_dim=16", "model.k_corr=3", "model.k_mm=3", "train.batch_size=128",
                                 "train.patience=100", f"train.epochs={epochs}", f"train.strategy={strategy}",
                                 f"train.zero_stage={stage}", "train.threads=1"])
    cfg.data = data
    results = train_loop(cfg, out, comm, resume=resume)
    from slifmr.distributed.checkpoint import load_checkpoint

    return {"results": results, "model": load_checkpoint(Path(out) / "checkpoint")[0]["model"]}


def test_deepspeed_zero_matches_ddp_and_resumes_exactly(tmp_path: Path, tiny_path: Path) -> None:
    """ZeRO 1 and 2 take the same Adam steps as the gradient all-reduce (fp32, same global
    batch), and a ZeRO run stopped after 2 epochs and resumed equals an uninterrupted one."""
    runs = {}
    for name, strategy, stage, epochs, resume in [
        ("ddp", "ddp", 2, 3, False), ("zero1", "deepspeed", 1, 3, False), ("zero2", "deepspeed", 2, 3, False),
        ("zero2-resumed", "deepspeed", 2, 2, False), ("zero2-resumed", "deepspeed", 2, 3, True),
    ]:
        out = tmp_path / name
        outs = run_on_two("_train_job", tmp_path, str(tiny_path), str(out), strategy, stage, epochs, resume)
        runs[name] = outs[0]
        assert outs[0]["results"] == outs[1]["results"]  # every rank reports the same run
    ref = runs["ddp"]
    for name in ("zero1", "zero2", "zero2-resumed"):
        for key, value in ref["model"].items():
            torch.testing.assert_close(runs[name]["model"][key], value, atol=1e-4, rtol=1e-3, msg=f"{name}: {key}")
    exact, resumed = runs["zero2"], runs["zero2-resumed"]
    for key, value in exact["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, atol=1e-6, rtol=1e-5, msg=key)
    assert resumed["results"]["valid"] == pytest.approx(exact["results"]["valid"], abs=1e-6)


def _sampled_steps_job(comm: Comm, data: str, grad_sync: str) -> dict:
    """A few neighbor-sampled steps, each rank on its own batches: the replicas must stay equal."""
    from slifmr.config import load_config
    from slifmr.data.format import read_dataset
    from slifmr.data.graphs import training_pairs
    from slifmr.distributed.strategy import make_strategy
    from slifmr.fanout import view_fanouts
    from slifmr.sampling.negative import BPRSampler
    from slifmr.sampling.neighbor import BatchSubgraphs, sampled_batch, to_hetero_data
    from slifmr.training import build_model

    cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.sampling=neighbor"])
    ds = read_dataset(data)
    model, static = build_model(cfg, ds, comm=comm, sparse_tables=True)
    comm.broadcast_parameters(model.parameters())
    strategy = make_strategy("ddp", model, comm, lr=0.01, row_sparse=model.embedding_tables(), grad_sync=grad_sync,
                             sparse_tables=True)
    graphs = graphs_at(model, static, cfg.model, 1)
    sub = BatchSubgraphs(to_hetero_data(graphs), view_fanouts("3,2", model.view_layers), 0, comm.rank)
    sampler = BPRSampler(*training_pairs(ds), ds.num_items, 32, 1, comm.rank, comm.world_size)
    for step, batch in zip(range(3), sampler.epoch(1)):
        strategy.step(model(sampled_batch(sub.sample(*batch, 1, step), graphs, torch.Generator()))["loss"])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sampled_replicas_stay_equal(tmp_path: Path, tiny_path: Path) -> None:
    results = {sync: run_on_two("_sampled_steps_job", tmp_path, str(tiny_path), sync) for sync in ("sparse", "dense")}
    for sync, (rank0, rank1) in results.items():
        for key, value in rank0.items():
            torch.testing.assert_close(rank1[key], value, atol=0, rtol=0, msg=f"{sync}: {key}")
    for key, value in results["sparse"][0].items():  # row gather and dense all-reduce: the same step
        torch.testing.assert_close(results["dense"][0][key], value, atol=1e-6, rtol=1e-5, msg=key)


def _grad_sync_job(comm: Comm, data: str, out: str) -> dict:
    from slifmr.config import load_config
    from slifmr.training import train_loop

    results = {}
    for sync in ("dense", "ddp"):
        cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=3", "model.k_mm=3", "train.epochs=2",
                                     "train.batch_size=256", f"train.grad_sync={sync}"])
        cfg.data = data
        results[sync] = train_loop(cfg, Path(out) / sync, comm)
    return results


def test_torch_ddp_takes_the_same_steps_as_the_flat_all_reduce(tmp_path: Path, tiny_path: Path) -> None:
    """grad_sync ddp wraps the model in torch's DistributedDataParallel (the loss is forward's
    output): the same averaged gradients as the hand-written flat all-reduce, so the same run."""
    for r in run_on_two("_grad_sync_job", tmp_path, str(tiny_path), str(tmp_path / "runs")):
        assert r["ddp"]["valid"] == pytest.approx(r["dense"]["valid"], abs=1e-6)
        assert r["ddp"]["test"] == pytest.approx(r["dense"]["test"], abs=1e-6)


def test_adam_state_saved_unfused_loads_into_fused_adam() -> None:
    """Checkpoints written before fused Adam hold fused=None in their groups: loading one keeps
    this run's fused update, and the moments come back."""
    from torch import nn

    from slifmr.distributed.strategy import DDPStrategy

    model = nn.Linear(3, 2)
    before = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    before.step()
    strategy = DDPStrategy(model, 1e-3, 0.0, Comm.current())
    strategy.load_state_dict(before.state_dict())
    assert strategy.optimizer.param_groups[0]["fused"] is True
    assert torch.equal(strategy.optimizer.state[model.weight]["exp_avg"], before.state[model.weight]["exp_avg"])


def _ridge_job(comm: Comm, data: str, nbrs: torch.Tensor, gram_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    from slifmr.data.format import read_dataset
    from slifmr.data.graphs import train_edges
    from slifmr.model import ridge
    from slifmr.model.cooc_ridge import cooccurrence_neighbours

    ridge.GRAM_BLOCK = gram_block  # this process only: G dense, or counted per neighbourhood
    ds = read_dataset(data)
    sharding = (comm.shard, comm.all_gather_rows)
    return (ridge.ridge_weights(train_edges(ds), ds.num_users, ds.num_items, nbrs, 3.0, sharding=sharding).to_dense(),
            cooccurrence_neighbours(train_edges(ds), ds.num_users, ds.num_items, 6, sharding))


@pytest.mark.parametrize("gram_block", [4096, 10])
def test_sharded_ridge_head_equals_one_process(tmp_path: Path, tiny_path: Path, tiny_ds, gram_block: int,  # noqa: ANN001
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker solves its block of items (G whole, or each neighbourhood's entries counted
    from the interactions) and one all-gather gives both the same W as one process; so do the
    co-occurrence lists of the cooc and union heads."""
    from slifmr.data.graphs import train_edges
    from slifmr.model import ridge

    monkeypatch.setattr(ridge, "GRAM_BLOCK", gram_block)
    n = tiny_ds.num_items
    nbrs = torch.stack([torch.randperm(n - 1, generator=torch.Generator().manual_seed(j))[:6] for j in range(n)])
    nbrs = nbrs + (nbrs >= torch.arange(n)[:, None]).long()
    one = ridge.ridge_weights(train_edges(tiny_ds), tiny_ds.num_users, n, nbrs, 3.0).to_dense()
    assert (ridge.item_gram(train_edges(tiny_ds), tiny_ds.num_users, n).dense is None) == (gram_block < n)
    from slifmr.model.cooc_ridge import cooccurrence_neighbours

    cooc = cooccurrence_neighbours(train_edges(tiny_ds), tiny_ds.num_users, n, 6)
    for w, worker_cooc in run_on_two("_ridge_job", tmp_path, str(tiny_path), nbrs, gram_block):
        assert torch.equal(w, one) and torch.equal(worker_cooc, cooc)
