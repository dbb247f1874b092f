"""Graphs built from a dataset's TRAINING edges, and the chunked exact kNN they share.

Edge lists are (2, E) int64 `edge_index` tensors with (E,) float `weight`, as in PyG.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from slifmr.data.format import TRAIN, Dataset
from slifmr.pyg import coalesce, to_undirected


def train_edges(ds: Dataset) -> Tensor:
    """(2, E_train) user-item edges of the training split only."""
    u, i = ds.edges(TRAIN)
    return torch.from_numpy(np.stack([u, i])).long()


def training_matrix(ds: Dataset, dtype: torch.dtype = torch.float32) -> Tensor:
    """X (M, N): the binary training interactions as a coalesced sparse COO tensor."""
    ui = train_edges(ds)
    return torch.sparse_coo_tensor(ui, torch.ones(ui.shape[1], dtype=dtype), (ds.num_users, ds.num_items)).coalesce()


def training_pairs(ds: Dataset) -> tuple[Tensor, Tensor]:
    """(users (E,), items (E,)) int64 tensors of the training interactions."""
    u, i = ds.edges(TRAIN)
    return torch.from_numpy(u).long(), torch.from_numpy(i).long()


def interactions_csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[Tensor, Tensor]:
    """(indptr (M+1,), items) of each user's interactions, items sorted per user."""
    order = np.lexsort((items, users))
    indptr = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return torch.from_numpy(indptr), torch.from_numpy(items[order].astype(np.int64))


def csr_entries(indptr: Tensor, indices: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """(row position in the chunk, item) of every entry of the given users' rows."""
    start, stop = indptr[users], indptr[users + 1]
    counts = stop - start
    row = torch.repeat_interleave(torch.arange(users.numel()), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return row, indices[torch.repeat_interleave(start, counts) + offsets]


@torch.no_grad()
def knn(x: Tensor, k: int, chunk_size: int = 2048, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact cosine top-k neighbours (self excluded) of `rows` (default: all) among all x.

    x: (N, d). Returns (neighbours (R, k) int64, similarities (R, k)). Works in row chunks,
    so memory is O(chunk_size * N), never N x N.
    """
    n = x.shape[0]
    k = min(k, n - 1)
    xn = torch.nn.functional.normalize(x.float(), dim=1)
    rows = torch.arange(n, device=x.device) if rows is None else rows.to(x.device)
    nbrs, sims = [], []
    for start in range(0, rows.numel(), chunk_size):
        r = rows[start : start + chunk_size]
        sim = xn[r] @ xn.T
        sim[torch.arange(r.numel(), device=x.device), r] = -float("inf")  # exclude self
        s, j = torch.topk(sim, k, dim=1)
        nbrs.append(j)
        sims.append(s)
    if not nbrs:
        return torch.zeros((0, k), dtype=torch.long, device=x.device), torch.zeros((0, k), device=x.device)
    return torch.cat(nbrs), torch.cat(sims)


def knn_edges(nbrs: Tensor, sims: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(2, R*k) edges row -> neighbour with their similarity, from `knn`'s output."""
    r, k = nbrs.shape
    rows = torch.arange(r, device=nbrs.device) if rows is None else rows
    edge_index = torch.stack([rows.repeat_interleave(k), nbrs.reshape(-1)])
    return edge_index, sims.reshape(-1)


def knn_graph(x: Tensor, k: int, binary: bool = False, chunk_size: int = 2048,
              search: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """Symmetrised, normalised kNN graph of x's rows: D^-1/2 S D^-1/2 over top-k cosine.

    Similarity is symmetric, so S u S^T keeps well-defined weights. Negative similarities
    are clipped to 0 (they carry no affinity); `binary` replaces weights by 1. `search`
    replaces the exact top-k (a sharded search must return the same neighbours).
    """
    nbrs, sims = search(x, k) if search is not None else knn(x, k, chunk_size)
    return symmetric_graph(*knn_edges(nbrs.cpu(), sims.cpu()), x.shape[0], binary)


def symmetric_graph(edge_index: Tensor, weight: Tensor, n: int, binary: bool = False) -> tuple[Tensor, Tensor]:
    """Union with the transpose, then D^-1/2 A D^-1/2."""
    weight = torch.ones_like(weight) if binary else weight.clamp_min(0.0)
    edge_index, weight = to_undirected(edge_index, weight, num_nodes=n, reduce="max")
    return edge_index, sym_norm(edge_index, weight, n)


def sym_norm(edge_index: Tensor, weight: Tensor, n: int) -> Tensor:
    """Weights of D^-1/2 A D^-1/2 (rows with zero degree stay zero)."""
    deg = torch.zeros(n, dtype=weight.dtype, device=weight.device).scatter_add_(0, edge_index[0], weight)
    inv = deg.pow(-0.5)
    inv[torch.isinf(inv)] = 0.0
    return inv[edge_index[0]] * weight * inv[edge_index[1]]


def modality_graph(features: dict[str, np.ndarray], k: int, weights: dict[str, float] | None = None,
                   search: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None,
                   present: dict[str, np.ndarray] | None = None) -> tuple[Tensor, Tensor] | None:
    """A_mm = sum_m w_m A_m of frozen per-modality kNN graphs (FREEDOM); None without features.
    present: {modality: (N,) bool}, the items with a real row; the others (zero rows) get no
    edge in that modality's graph."""
    if not features:
        return None
    parts_i, parts_w = [], []
    n = next(iter(features.values())).shape[0]
    for name, x in features.items():
        w = (weights or {}).get(name, 1.0 / len(features))
        mask = (present or {}).get(name)
        if mask is None or mask.all():
            ei, ew = knn_graph(torch.tensor(np.asarray(x)), k, search=search)
        else:
            rows = torch.from_numpy(np.flatnonzero(mask))
            if rows.numel() <= 1:
                continue
            ei, ew = knn_graph(torch.tensor(np.asarray(x)[mask]), min(k, rows.numel() - 1), search=search)
            ei = rows[ei]
        parts_i.append(ei)
        parts_w.append(ew * w)
    if not parts_i:
        return None
    return coalesce(torch.cat(parts_i, 1), torch.cat(parts_w), num_nodes=n, reduce="sum")
