"""The self-loop's item-item ridge head (architecture.md §1): every item's training interactions
regressed, in closed form, on those of its top-k neighbours in Z(t-1), the neighbourhoods S(t)
is built from.

EASE (Steck, WWW 2019) fits a dense item-item matrix B by ridge regression of X on itself and
is the strongest simple model on MovieLens-type data; SLIM (Ning and Karypis, ICDM 2011)
restricts such a matrix to a sparse pattern. Here the pattern is the self-loop's: item j is
predicted from N_j, its k nearest neighbours by cosine of the fused representations z, so the
multimodal, KG and collaborative views decide which item-item weights exist and the ridge
regression on the interactions decides their values:

    w_j = (G[N_j, N_j] + l2 I)^-1 G[N_j, j],   G = X^T X        (ridge normal equations)

j is never among its own neighbours, so EASE's zero-diagonal constraint holds by construction.
Scores are x_u W (x_u: user u's training items), fused with the embedding score at ranking
(`Representations`). Cost per fusion: one k x k Cholesky solve per item and its Gram entries:
G whole once per run up to GRAM_BLOCK items (`item_gram`), above that each neighbourhood's
entries counted from the interactions (`neighbourhood_gram`), never an N x N matrix. Workers
split the items and all-gather the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from slifmr.errors import SlifmrError

if TYPE_CHECKING:
    from slifmr.model.propagate import RowSharding

GRAM_BLOCK = 4096  # catalogues up to this many items keep all of G dense (64 MB at most)
SOLVE_CHUNK = 128  # items whose k x k systems are gathered and solved together (cache-sized)


class ItemGram:
    """Entries of G = X^T X (N, N), X the (M, N) binary training matrix, never formed whole
    above GRAM_BLOCK items. Training never changes X, so a run builds this once and every
    fusion reuses it.

    ui_edges: (2, E) training (user, item) pairs. `dense`: all of G (N, N) float32 when
    N <= GRAM_BLOCK, else None; `neighbourhoods(slots)`: G[S_j, S_j] (c, s, s) float32 for each
    row S_j of slots (c, s) (counts, exact in float32 below 2^24)."""

    def __init__(self, ui_edges: Tensor, num_users: int, num_items: int):
        u, i = ui_edges.cpu().numpy()
        if u.size >= 2**31:  # the Gram kernel indexes a neighbourhood's interactions with int32
            raise SlifmrError(f"the ridge head handles fewer than 2^31 training interactions, got {u.size:,}: "
                              "set model.ridge_weight=0")
        x = sp.csc_matrix((np.ones(u.size, np.float32), (u, i)), shape=(num_users, num_items))
        x.sum_duplicates()
        x.data[:] = 1.0
        self.indptr, self.users = x.indptr.astype(np.int64), x.indices.astype(np.int32)
        self.num_items = num_items
        self.dense = torch.from_numpy((x.T @ x).toarray()) if num_items <= GRAM_BLOCK else None

    def neighbourhoods(self, slots: np.ndarray) -> Tensor:
        if self.dense is not None:
            # gathered by flat int32 index (N^2 < 2^31 here), a cache-sized chunk at a time: 3x
            # faster than an int64 take of the whole batch, once a third of a fusion on ml-100k
            idx = torch.from_numpy(slots).int()
            flat = (idx[:, :, None] * self.num_items + idx[:, None, :]).reshape(-1)
            return self.dense.reshape(-1).index_select(0, flat).view(*slots.shape, slots.shape[1])
        from slifmr.model.neighbourhood_gram import (
            neighbourhood_grams,  # numba: compiled on first use
        )

        return torch.from_numpy(neighbourhood_grams(self.indptr, self.users, np.ascontiguousarray(slots, np.int64)))


def item_gram(ui_edges: Tensor, num_users: int, num_items: int) -> ItemGram:
    """The run's `ItemGram` of the training edges (2, E)."""
    return ItemGram(ui_edges, num_users, num_items)


def ridge_weights(ui_edges: Tensor, num_users: int, num_items: int, neighbours: Tensor, l2: float,
                  gram: ItemGram | None = None, sharding: RowSharding | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """W^T as an (N, N) CSR matrix: row j holds w_j on the columns N_j (the ridge normal
    equations of the module docstring, solved in float32 by Cholesky).

    ui_edges: (2, E) training (user, item) pairs; neighbours: (N, k) integer, row j = N_j (j not
    among them, no repeats); l2 > 0; gram: the run's `item_gram` of the same edges (built here
    when None). `sharding` (shard(n) -> [start, stop), all_gather_rows): each worker solves its
    block of the items and one all-gather of the (N, k) weights gives every worker all of W; the
    result equals one process's (each system is solved alone, whoever solves it). The Cholesky
    solves run on `device` (a GPU when the run has one); W^T is returned on the CPU."""
    n, k = neighbours.shape
    if k == 0:  # a one-item catalogue: no neighbours, no weights
        return _csr(torch.zeros(n, 0), torch.zeros(n, 0, dtype=torch.long), n)
    # sorted rows: each system's gather reads its rows of G in address order, and the
    # neighbours are already the CSR column order of W^T
    nbrs = torch.sort(neighbours.cpu().int(), dim=1).values
    gram = gram if gram is not None else item_gram(ui_edges, num_users, num_items)
    start, stop = sharding[0](n) if sharding else (0, n)
    weights = torch.empty(stop - start, k)
    for a in range(start, stop, SOLVE_CHUNK):
        b = min(a + SOLVE_CHUNK, stop)
        # each system's Gram entries: its neighbours, then the item itself
        slots = torch.cat([nbrs[a:b], torch.arange(a, b, dtype=torch.int32)[:, None]], 1).numpy()
        g = gram.neighbourhoods(slots)
        weights[a - start : b - start] = _cholesky_solve(g[:, :k, :k], g[:, :k, k:], l2, device)
    if sharding:
        weights = sharding[1](weights, n)
    return _csr(weights, nbrs, n)


def _cholesky_solve(a: Tensor, b: Tensor, l2: float, device: torch.device | str = "cpu") -> Tensor:
    """(c, k) solutions (on the CPU) of (a + l2 I) w = b for a (c, k, k) Gram blocks and b
    (c, k, 1), solved on `device`."""
    a, b = a.to(device), b.to(device)
    a = a + l2 * torch.eye(a.shape[1], device=a.device)
    # a + l2 I is symmetric positive definite, and l2 keeps it well conditioned (eigenvalues
    # >= l2): Cholesky in float32 agrees with float64 to ~1e-6 relative. Two triangular solves
    # are faster than cholesky_solve's batched loop on the CPU, with the same values.
    lower = torch.linalg.cholesky(a)
    y = torch.linalg.solve_triangular(lower, b, upper=False)
    return torch.linalg.solve_triangular(lower.mT, y, upper=True).squeeze(2).cpu()


def weights_csr(weights: Tensor, nbrs: Tensor) -> Tensor:
    """W^T (N, N) CSR from each item's weights (N, k) on its sorted neighbours (N, k)."""
    return _csr(weights, nbrs, weights.shape[0])


def _csr(weights: Tensor, nbrs: Tensor, n: int) -> Tensor:
    """W^T (n, n) CSR from each row's weights (n, k) on its sorted columns nbrs (n, k)."""
    k = nbrs.shape[1]
    crow = torch.arange(0, n * k + 1, k) if k > 0 else torch.zeros(n + 1, dtype=torch.long)
    return torch.sparse_csr_tensor(crow, nbrs.reshape(-1).long(), weights.reshape(-1), (n, n))


def ridge_scores(interactions: Tensor, weights_t: Tensor, users: Tensor) -> Tensor:
    """x_u W for users (B,): (B, N). interactions: (M, N) sparse COO of training X;
    weights_t: W^T (N, N), CSR from `ridge_weights` or dense (the EASE head, every item a
    neighbour of every other)."""
    rows = torch.index_select(interactions, 0, users.to(interactions.device))  # (B, N) sparse
    if weights_t.layout == torch.strided:  # W row-major: a sparse x column-major product is ~15x slower
        return torch.sparse.mm(rows, weights_t.T.to(rows.device).contiguous())
    # W^T X_B^T with both sparse: the cost is the neighbours of the users' items, where a dense
    # X_B^T made it N x k x B
    product = csr_product(weights_t.to(rows.device), rows.t().coalesce().to_sparse_csr())
    return product.to_dense().T


def csr_product(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for sparse CSR a (n, m) and b (m, p): (n, p) CSR float32. On the CPU through scipy:
    torch's CPU CSR x CSR product (MKL) leaks memory on every call (pytorch/pytorch#109445;
    measured in torch 2.13: about 3.3 MB per (1682 x 1682, 100 per row) x (1682 x 256) product),
    which grew a run with the head by about 10 MB per epoch on ml-100k and 0.2 GB on ml-1m.
    Elsewhere torch's own."""
    if a.device.type != "cpu" or b.device.type != "cpu":
        return torch.sparse.mm(a, b)

    def scipy_csr(t: Tensor) -> sp.csr_matrix:
        return sp.csr_matrix((t.values().numpy(), t.col_indices().numpy(), t.crow_indices().numpy()), shape=tuple(t.shape))

    c = scipy_csr(a) @ scipy_csr(b)
    c.sort_indices()
    return torch.sparse_csr_tensor(torch.from_numpy(c.indptr.astype(np.int64)), torch.from_numpy(c.indices.astype(np.int64)),
                                   torch.from_numpy(c.data.astype(np.float32, copy=False)), tuple(c.shape))


def first_distinct(candidates: Tensor, k: int) -> Tensor:
    """(N, k): each row's first k distinct entries of `candidates` (N, L), in order (each row
    must hold at least k distinct values). How the head's union neighbourhood is drawn from its
    concatenated candidate lists."""
    n, length = candidates.shape
    order = torch.sort(candidates, dim=1, stable=True)
    repeat = torch.zeros_like(candidates, dtype=torch.bool)
    repeat[:, 1:] = order.values[:, 1:] == order.values[:, :-1]  # not the first of its value in the row
    first = torch.ones_like(repeat).scatter_(1, order.indices, ~repeat)  # back to the row's own order
    if bool((first.sum(1) < k).any()):
        raise ValueError(f"a row holds fewer than {k} distinct candidates")
    keep = first & (torch.cumsum(first.int(), 1) <= k)
    return candidates[keep].view(n, k)
