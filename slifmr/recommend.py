"""Top-K recommendations from a trained model; items the user already interacted with
(in any split) are never recommended."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from slifmr.data.format import Dataset
from slifmr.data.graphs import csr_entries, interactions_csr
from slifmr.errors import SlifmrError
from slifmr.model.slifmr import SLIFMR


def resolve_users(ds: Dataset, spec: str) -> Tensor:
    """Raw user ids ('196,186') -> contiguous ids; unknown ids are an error."""
    raw = [u.strip() for u in spec.split(",") if u.strip()]
    if not raw:
        raise SlifmrError("--users is empty")
    if "users" in ds.ids:
        index = {str(t): i for i, t in enumerate(ds.ids["users"])}
    else:
        index = {str(i): i for i in range(ds.num_users)}
    missing = [u for u in raw if u not in index]
    if missing:
        raise SlifmrError(f"unknown user id '{missing[0]}' (not in dataset {ds.name})")
    return torch.tensor([index[u] for u in raw])


def seen_items(ds: Dataset) -> tuple[Tensor, Tensor]:
    """CSR of every user's interactions in any split: what is never recommended."""
    return interactions_csr(ds.user, ds.item, ds.num_users)


@torch.no_grad()
def recommend(model: SLIFMR, ds: Dataset, users: Tensor, k: int,
              seen: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(items (B, k), scores (B, k)) for contiguous user ids; `seen` from `seen_items`."""
    scores = model.full_scores(users).clone()
    rows, items = csr_entries(*(seen or seen_items(ds)), users)
    scores[rows, items] = -math.inf
    top = torch.topk(scores, min(k, ds.num_items), dim=1)
    return top.indices, top.values


def _raw(ds: Dataset, kind: str, ids: np.ndarray) -> np.ndarray:
    return ds.ids[kind][ids].astype(str) if kind in ds.ids else ids.astype(str)


def _titles(ds: Dataset) -> dict[int, str]:
    if ds.items is None or "title" not in ds.items.column_names:
        return {}
    return dict(zip(ds.items.column("item").to_pylist(), ds.items.column("title").to_pylist()))


def format_recommendations(ds: Dataset, users: Tensor, items: Tensor, scores: Tensor) -> str:
    titles = _titles(ds)
    lines = []
    for r, u in enumerate(users.tolist()):
        lines.append(f"user {_raw(ds, 'users', np.array([u]))[0]}:")
        for rank, (i, s) in enumerate(zip(items[r].tolist(), scores[r].tolist()), 1):
            title = f"  {titles[i]}" if i in titles and titles[i] else ""
            lines.append(f"  {rank:2d}. item {_raw(ds, 'items', np.array([i]))[0]:>6}  score {s:7.3f}{title}")
    return "\n".join(lines)


def write_recommendations(model: SLIFMR, ds: Dataset, k: int, out: Path, chunk: int = 1024) -> Path:
    """Every user's top-k as Parquet (user, rank, item, score), written atomically."""
    parts = []
    seen = seen_items(ds)
    for start in range(0, ds.num_users, chunk):
        users = torch.arange(start, min(start + chunk, ds.num_users))
        items, scores = recommend(model, ds, users, k, seen)
        kk = items.shape[1]
        parts.append(pa.table({
            "user": _raw(ds, "users", users.repeat_interleave(kk).numpy()),
            "rank": np.tile(np.arange(1, kk + 1), users.numel()),
            "item": _raw(ds, "items", items.reshape(-1).numpy()),
            "score": scores.reshape(-1).numpy(),
        }))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(pa.concat_tables(parts), tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
