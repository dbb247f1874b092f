"""Batch inference on Ray Data: every user's top K from an export, scored by a pool of actors that
each load the exported tables once and write their own Parquet parts.

    user rows (ray.data.from_numpy, one block per batch)
        -> map_batches(ExportRecommender, compute=ActorPoolStrategy(size=workers))
           each actor scores a batch of users and writes it to OUT/part-<first user row>.parquet
        -> the driver collects one row count per part: it moves no recommendation rows

Each actor holds the export (`slifmr.export.load_export`: embeddings, history, ridge head) and
scores a batch exactly as the trained model does (`Export.recommend_batch`: seen items masked);
with `gpu` each actor takes one GPU and scores there. OUT is a folder of parts in user order
(pyarrow and Ray Data read it as one table: `pq.read_table(OUT)`), a local path or any URI a
pyarrow filesystem opens (s3://, gs://, hdfs://). A local OUT is written to a temporary folder
beside it and renamed into place when every part is written; a URI is written in place (object
stores have no rename) and refused when it exists. A batch with nothing to recommend writes an
empty part with the same schema (`slifmr.recommend.RECOMMENDATION_SCHEMA`).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from slifmr.atomic import atomic_folder
from slifmr.errors import SlifmrError
from slifmr.recommend import RECOMMENDATION_SCHEMA


def _filesystem(out: str) -> tuple[pafs.FileSystem, str]:
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    return pafs.LocalFileSystem(), str(Path(out).absolute())


class ExportRecommender:
    """A Ray Data actor: loads the export once, then scores batches of user rows and writes each
    batch's lists as one Parquet part under `out_dir`; returns the part's row count."""

    def __init__(self, export_dir: str, k: int, out_dir: str, gpu: bool = False):
        import torch

        from slifmr.export import load_export

        torch.set_num_threads(1)  # one core per actor: the pool has one actor per core it uses
        self.export, self.k = load_export(export_dir), k
        self.device = "cuda" if gpu else "cpu"
        self.fs, self.out_dir = _filesystem(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["data"], np.int64)
        lists = pa.table(self.export.recommend_batch(rows, self.k, self.device)).cast(RECOMMENDATION_SCHEMA)
        part = f"{self.out_dir}/part-{int(rows[0]) if rows.size else 0:010d}.parquet"
        pq.write_table(lists, part, filesystem=self.fs)
        return {"users": np.array([rows.size], np.int64), "rows": np.array([lists.num_rows], np.int64),
                "actor": np.array([os.getpid()], np.int64)}


def recommend_all_ray(export_dir: str | Path, out: str | Path, k: int, workers: int, gpu: bool = False,
                      address: str | None = None, batch_size: int = 4096) -> tuple[str, int]:
    """Every user's top-k unseen items from the export in `export_dir`, scored by `workers`
    actors (one GPU each with `gpu`), written as a folder of Parquet parts at `out` (a local
    path or a pyarrow URI). Batches hold at most `batch_size` users and at least one per actor
    (a small job is split evenly over the actors, and never gets more actors than batches).
    A job of one batch on a local Ray (no `address`, no GPU) is scored in this process, in the
    same layout: Ray's start-up would cost more than the scoring. Returns (`out`, how many
    actors wrote parts: 0 in-process). Raises SlifmrError when `out` exists or workers < 1."""
    import json

    import ray

    from slifmr.launch import ray_session

    out = str(out)
    if workers < 1:
        raise SlifmrError(f"--workers must be >= 1 for Ray Data inference, got {workers}")
    fs, path = _filesystem(out)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    users = json.loads((Path(export_dir) / "manifest.json").read_text())["users"]
    if users <= batch_size and not gpu and address is None and not os.environ.get("RAY_ADDRESS"):
        # one batch on this machine: Ray's start-up (seconds) would cost more than the scoring
        import torch

        threads = torch.get_num_threads()  # the actor's constructor takes one thread: not this process's
        try:
            with atomic_folder(out) if "://" not in out else nullcontext(out) as target:
                fs.create_dir(_filesystem(str(target))[1], recursive=True)
                ExportRecommender(str(Path(export_dir).resolve()), k, str(target))({"data": np.arange(users)})
        finally:
            torch.set_num_threads(threads)
        return out, 0
    # user rows as in-memory blocks of one batch each (no read tasks; every actor gets blocks)
    batch_size = max(1, min(batch_size, -(-users // workers)))
    blocks = [np.arange(a, min(a + batch_size, users), dtype=np.int64) for a in range(0, users, batch_size)]
    workers = max(1, min(workers, len(blocks)))
    writers: set[int] = set()

    def score(target: str) -> None:
        fs.create_dir(_filesystem(target)[1], recursive=True)
        parts = (ray.data.from_numpy(blocks)
                 .map_batches(ExportRecommender, fn_constructor_args=(str(Path(export_dir).resolve()), k, target, gpu),
                              batch_size=batch_size, batch_format="numpy",
                              compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
                              num_gpus=1 if gpu else 0)
                 .take_all())
        scored = sum(int(p["users"]) for p in parts)
        writers.update(int(p["actor"]) for p in parts)
        if scored != users:  # every user's batch wrote its part, or the output is incomplete
            raise SlifmrError(f"Ray Data inference wrote the lists of {scored:,} of {users:,} users under {target}")

    with ray_session(address):
        if "://" in out:
            score(out)
        else:
            with atomic_folder(out) as tmp:
                score(str(tmp))
    return out, len(writers)
