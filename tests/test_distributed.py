"""Collectives, sharded kNN and sharded evaluation on 2 real gloo processes (no Ray)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    finally:
        dist.destroy_process_group()


def run_on_two(fn_name: str, tmp_path: Path, *args) -> list:  # noqa: ANN002
    mp.spawn(_worker, args=(2, _free_port(), fn_name, str(tmp_path), args), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _knn_job(comm: Comm, z: torch.Tensor, k: int) -> tuple:
    from slifmr.distributed.knn import sharded_knn
    from slifmr.model.graphs import correlation_graph

    return correlation_graph(z, k, knn_fn=sharded_knn(comm, chunk_size=7))


def test_sharded_knn_equals_single_process_exact_knn(tmp_path: Path) -> None:
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


def _eval_job(comm: Comm, data: str, scores: torch.Tensor) -> dict:
    from slifmr.data.format import TEST, read_dataset
    from slifmr.evaluation import Evaluator
    from slifmr.trainer import _user_shard

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
