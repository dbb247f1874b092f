"""Batch inference on Ray Data (issue 17, part 2): every user's top K from an export, scored by a
pool of actors that each load the exported tables once.

    user rows (ray.data.from_numpy) -> map_batches(ExportRecommender, concurrency=workers)
        -> iter_batches on the driver -> one Parquet file

Each actor holds the export (`slifmr.export.load_export`: embeddings, history, ridge head) and
scores a batch of users exactly as the trained model does (`Export.recommend_batch`: seen items
masked); with `gpu` each actor takes one GPU and scores there. The driver streams the results
into one Parquet file (user, rank, item, score with raw ids), written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from slifmr.atomic import atomic_path
from slifmr.errors import SlifmrError
from slifmr.recommend import RECOMMENDATION_SCHEMA


class ExportRecommender:
    """A Ray Data actor: loads the export once, then scores batches of user rows."""

    def __init__(self, export_dir: str, k: int, gpu: bool = False):
        import torch

        from slifmr.export import load_export

        torch.set_num_threads(1)  # one core per actor: the pool has one actor per core it uses
        self.export, self.k = load_export(export_dir), k
        self.device = "cuda" if gpu else "cpu"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.export.recommend_batch(np.asarray(batch["data"], np.int64), self.k, self.device)


def recommend_all_ray(export_dir: str | Path, out: str | Path, k: int, workers: int, gpu: bool = False,
                      address: str | None = None, batch_size: int = 4096) -> Path:
    """Every user's top-k unseen items from the export in `export_dir`, scored by `workers`
    actors (one GPU each with `gpu`), written to the Parquet file `out`. Raises SlifmrError when
    `out` exists or workers < 1."""
    import json

    import ray

    from slifmr.distributed.launch import connect

    out = Path(out)
    if workers < 1:
        raise SlifmrError(f"--workers must be >= 1 for Ray Data inference, got {workers}")
    if out.exists():
        raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
    users = json.loads((Path(export_dir) / "manifest.json").read_text())["users"]
    connect(address)
    out.parent.mkdir(parents=True, exist_ok=True)
    # user rows as in-memory blocks of one batch each (no read tasks; every actor gets blocks)
    blocks = [np.arange(a, min(a + batch_size, users), dtype=np.int64) for a in range(0, users, batch_size)]
    recs = (ray.data.from_numpy(blocks)
            .map_batches(ExportRecommender, fn_constructor_args=(str(Path(export_dir).resolve()), k, gpu),
                         batch_size=batch_size, batch_format="numpy", concurrency=workers, num_cpus=1,
                         num_gpus=1 if gpu else 0))
    # the driver streams the actors' output into one file: no write tasks wait for the cores the
    # actors hold, and --out is one Parquet file, as without --workers
    # (users with no unseen item left give no rows: zero rows in all is an empty file, as in-process)
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, RECOMMENDATION_SCHEMA) as writer:
        for batch in recs.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.write_table(batch.select(RECOMMENDATION_SCHEMA.names).cast(RECOMMENDATION_SCHEMA))
    return out
