"""Every collective is reached by every rank whatever its shard size (issue 12, kind 1).

Real gloo processes train on datasets with fewer users and fewer items than workers (some
ranks evaluate no user, search the neighbours of no item, infer no row); a hang fails the test
through a deadline instead of blocking the suite. Fewer training pairs than workers is refused
before any work."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from slifmr.config import load_config
from slifmr.data.format import TEST, TRAIN, VALID, Dataset
from slifmr.distributed.collectives import Comm
from slifmr.errors import SlifmrError
from slifmr.training import train_loop

DEADLINE_S = 240  # generous for 4 spawned processes on 2 cores; a hang never ends


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, ds: Dataset, modes: tuple[str, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = {}
        for mode in modes:
            cfg = load_config(overrides=["model.embedding_dim=8", "model.k_corr=5", "model.k_mm=5", "train.epochs=3",
                                         "train.batch_size=4", f"train.sampling={mode}", "train.fanout=-1,-1"])
            try:
                results[mode] = train_loop(cfg, Path(out) / mode, Comm.current(), ds=ds)
            except SlifmrError as e:  # a refusal must reach every rank alike, not hang one
                results[mode] = {"error": str(e)}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_group(world: int, tmp_path: Path, ds: Dataset, modes: tuple[str, ...]) -> list[dict]:
    """Train on `world` gloo processes; fails (and kills them) if they outlive the deadline."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path), ds, modes), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world} workers did not finish in {DEADLINE_S} s: a collective some rank skipped")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _dataset(name: str, rows: list[tuple[int, int, int]], num_users: int, num_items: int) -> Dataset:
    """A tiny pre-split dataset with a 4-d modality and a 3-triple KG linking two items."""
    u, i, s = (np.array(c, dtype=np.int64) for c in zip(*rows))
    rng = np.random.default_rng(0)
    return Dataset(name=name, num_users=num_users, num_items=num_items, user=u, item=i, split=s.astype(np.int8),
                   features={"image": rng.normal(size=(num_items, 4)).astype(np.float32)},
                   kg=np.array([[0, 0, 2], [1, 0, 2], [2, 1, 3]]), item_entity=np.array([[0, 0], [1, 1]]),
                   num_entities=4, relation_names=["r0", "r1"])


def test_one_user_two_workers_finishes(tmp_path: Path) -> None:
    """Case 08: rank 1 has no user to evaluate; the best-model evaluation used to hang."""
    ds = _dataset("solo", [(0, 0, TRAIN), (0, 1, TRAIN), (0, 2, TRAIN), (0, 3, VALID), (0, 4, TEST)], 1, 5)
    ranks = run_group(2, tmp_path, ds, ("full",))
    assert ranks[0]["full"]["test"] == ranks[1]["full"]["test"]
    assert (tmp_path / "full" / "results.json").exists()


def test_fewer_users_and_items_than_workers_full_and_sampled(tmp_path: Path) -> None:
    """4 workers, 2 users, 3 items, 4 training pairs: ranks 2-3 own no user, rank 3 no item
    row (kNN, layer-wise inference); full-graph and neighbor-sampled training both finish."""
    rows = [(0, 0, TRAIN), (0, 1, TRAIN), (0, 2, TEST), (1, 0, TRAIN), (1, 2, TRAIN), (1, 1, VALID)]
    ranks = run_group(4, tmp_path, _dataset("duo", rows, 2, 3), ("full", "neighbor"))
    for mode in ("full", "neighbor"):
        assert all(r[mode]["valid"] == ranks[0][mode]["valid"] for r in ranks)
        assert (tmp_path / mode / "results.json").exists()


def test_fewer_training_pairs_than_workers_is_refused(tmp_path: Path) -> None:
    ds = _dataset("one-pair", [(0, 0, TRAIN), (0, 1, VALID), (0, 2, TEST)], 1, 3)
    for rank in run_group(2, tmp_path / "gloo", ds, ("full",)):  # real gloo processes: every rank refuses
        assert "2 workers but dataset one-pair has 1 training interaction" in rank["full"]["error"]
    cfg = load_config(overrides=["model.embedding_dim=8", "train.epochs=1"])
    with pytest.raises(SlifmrError, match="2 workers but dataset one-pair has 1 training interaction"):
        train_loop(cfg, tmp_path / "run", Comm(rank=0, world_size=2), ds=ds)
    assert not (tmp_path / "run").exists()
