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
(`Representations`). Cost per fusion: one k x k solve per item and its Gram entries; G itself
is computed once per run up to GRAM_BLOCK items (`item_gram`), above that per block of items,
never as an N x N matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

GRAM_BLOCK = 4096  # columns of X whose dense Gram block one chunk of items works on
SOLVE_CHUNK = 128  # items whose k x k systems are gathered and solved together (cache-sized)


def item_gram(ui_edges: Tensor, num_users: int, num_items: int) -> Tensor | None:
    """G = X^T X (N, N) float32 of the binary training matrix when N <= GRAM_BLOCK, else None
    (`ridge_weights` then builds the Gram block of each chunk of items itself). Training
    never changes X, so a run computes it once and every fusion reuses it."""
    if num_items > GRAM_BLOCK:
        return None
    x = _binary_csc(ui_edges, num_users, num_items)
    return torch.from_numpy((x.T @ x).toarray().astype(np.float32))


def _binary_csc(ui_edges: Tensor, num_users: int, num_items: int) -> sp.csc_matrix:
    u, i = ui_edges.numpy()
    x = sp.csc_matrix((np.ones(u.size), (u, i)), shape=(num_users, num_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def ridge_weights(ui_edges: Tensor, num_users: int, num_items: int, neighbours: Tensor, l2: float,
                  gram: Tensor | None = None) -> Tensor:
    """W^T as an (N, N) CSR matrix: row j holds w_j on the columns N_j.

    ui_edges: (2, E) training (user, item) pairs; neighbours: (N, k) integer, row j = N_j (j not
    among them, no repeats); l2 > 0; gram: `item_gram` of the same edges (computed here when
    None). Solved in float32 by Cholesky. Every worker solves every item
    (the result is the same on each); at 10^6 items that is about 25,000 blocks per fusion."""
    n, k = neighbours.shape
    if k == 0:  # a one-item catalogue: no neighbours, no weights
        return torch.sparse_csr_tensor(torch.zeros(n + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                       torch.zeros(0), (n, n))
    # sorted rows: each system's gather reads its rows of G in address order, and the
    # neighbours are already the CSR column order of W^T
    nbrs = torch.sort(neighbours.cpu().int(), dim=1).values
    gram = gram if gram is not None else item_gram(ui_edges, num_users, num_items)
    if gram is not None:
        return _csr(_solve(gram, nbrs, torch.arange(n, dtype=torch.int32), l2), nbrs, n)
    x = _binary_csc(ui_edges, num_users, num_items)
    chunk = max(1, GRAM_BLOCK // (k + 1))
    weights = []
    for start in range(0, n, chunk):
        items = np.arange(start, min(start + chunk, n))
        nb = nbrs[items].numpy()
        cols = np.unique(np.concatenate([nb.ravel(), items]))
        block = x[:, cols]
        # (C, C) co-occurrence counts, exact in float32 (counts below 2^24)
        g = torch.from_numpy((block.T @ block).toarray().astype(np.float32))
        pos_nb = torch.from_numpy(np.searchsorted(cols, nb).astype(np.int32))  # (c, k) local column of each neighbour
        pos_j = torch.from_numpy(np.searchsorted(cols, items).astype(np.int32))  # (c,)
        weights.append(_solve(g, pos_nb, pos_j, l2))
    return _csr(torch.cat(weights), nbrs, n)


def _solve(g: Tensor, pos_nb: Tensor, pos_j: Tensor, l2: float) -> Tensor:
    """(c, k) solutions of (g[N, N] + l2 I) w = g[N, j] for the c systems with neighbour rows
    pos_nb (c, k) and target rows pos_j (c,) of g (C, C), both int32."""
    c, k = pos_nb.shape
    flat, size = g.cpu().reshape(-1), g.shape[1]
    if size * size >= 2**31:  # flat positions past int32
        pos_nb, pos_j = pos_nb.long(), pos_j.long()
    out = torch.empty(c, k)
    for start in range(0, c, SOLVE_CHUNK):
        nb = pos_nb[start : start + SOLVE_CHUNK]
        rows = nb * size
        # gathered by flat int32 index, chunk by chunk: 3x faster than a whole-batch int64
        # take, which was a third of a fusion on ml-100k
        a = flat.index_select(0, (rows[:, :, None] + nb[:, None, :]).reshape(-1)).view(-1, k, k)
        a.diagonal(dim1=1, dim2=2).add_(l2)
        b = flat.index_select(0, (rows + pos_j[start : start + SOLVE_CHUNK, None]).reshape(-1)).view(-1, k, 1)
        # G[N_j, N_j] + l2 I is symmetric positive definite, and l2 keeps it well conditioned
        # (eigenvalues >= l2): Cholesky in float32 agrees with float64 to ~1e-6 relative
        out[start : start + SOLVE_CHUNK] = torch.cholesky_solve(b, torch.linalg.cholesky(a)).squeeze(2)
    return out


def _csr(weights: Tensor, nbrs: Tensor, n: int) -> Tensor:
    """W^T (n, n) CSR from each row's weights (n, k) on its sorted columns nbrs (n, k)."""
    k = nbrs.shape[1]
    return torch.sparse_csr_tensor(torch.arange(0, n * k + 1, k), nbrs.reshape(-1).long(), weights.reshape(-1), (n, n))


def ridge_scores(interactions: Tensor, weights_t: Tensor, users: Tensor) -> Tensor:
    """x_u W for users (B,): (B, N). interactions: (M, N) sparse COO of training X;
    weights_t: W^T (N, N) CSR from `ridge_weights`."""
    rows = torch.index_select(interactions, 0, users.to(interactions.device)).to_dense()  # (B, N)
    return torch.sparse.mm(weights_t, rows.T).T
