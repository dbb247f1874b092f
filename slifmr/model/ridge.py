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
(`Representations`). Cost per fusion: one k x k solve per item and the Gram entries of each
item block, never an N x N matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

GRAM_BLOCK = 4096  # columns of X whose dense Gram block one chunk of items works on


def ridge_weights(ui_edges: Tensor, num_users: int, num_items: int, neighbours: Tensor, l2: float) -> Tensor:
    """W^T as an (N, N) CSR matrix: row j holds w_j on the columns N_j.

    ui_edges: (2, E) training (user, item) pairs; neighbours: (N, k) integer, row j = N_j (j not
    among them); l2 > 0. Solved in float32 by Cholesky. Every worker solves every item
    (the result is the same on each); at 10^6 items that is about 25,000 blocks per fusion."""
    n, k = neighbours.shape
    u, i = ui_edges.numpy()
    x = sp.csc_matrix((np.ones(u.size), (u, i)), shape=(num_users, num_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    nbrs = neighbours.cpu().numpy()
    chunk = n if n <= GRAM_BLOCK else max(1, GRAM_BLOCK // (k + 1))
    weights = []
    for start in range(0, n, chunk):
        items = np.arange(start, min(start + chunk, n))
        nb = nbrs[items]
        cols = np.unique(np.concatenate([nb.ravel(), items]))
        block = x[:, cols]
        # (C, C) co-occurrence counts, exact in float32 (counts below 2^24); gathered by flat
        # index, which is 3x faster than 2-D advanced indexing for the (c, k, k) systems
        g = torch.from_numpy((block.T @ block).toarray().astype(np.float32))
        pos_nb = torch.from_numpy(np.searchsorted(cols, nb))  # (c, k) local column of each neighbour
        pos_j = torch.from_numpy(np.searchsorted(cols, items))  # (c,)
        a = torch.take(g, pos_nb[:, :, None] * cols.size + pos_nb[:, None, :])  # (c, k, k)
        a.diagonal(dim1=1, dim2=2).add_(l2)
        b = torch.take(g, pos_nb * cols.size + pos_j[:, None])  # (c, k): G[N_j, j]
        # G[N_j, N_j] + l2 I is symmetric positive definite, and l2 keeps it well conditioned
        # (eigenvalues >= l2): Cholesky in float32 agrees with float64 to ~1e-6 relative
        weights.append(torch.cholesky_solve(b.unsqueeze(2), torch.linalg.cholesky(a)).squeeze(2))
    w = torch.cat(weights)
    rows = torch.arange(n)[:, None].expand(n, k)
    index = torch.stack([rows.reshape(-1), neighbours.cpu().long().reshape(-1)])
    return torch.sparse_coo_tensor(index, w.reshape(-1), (n, n)).coalesce().to_sparse_csr()


def ridge_scores(interactions: Tensor, weights_t: Tensor, users: Tensor) -> Tensor:
    """x_u W for users (B,): (B, N). interactions: (M, N) sparse COO of training X;
    weights_t: W^T (N, N) CSR from `ridge_weights`."""
    rows = torch.index_select(interactions, 0, users.to(interactions.device)).to_dense()  # (B, N)
    return torch.sparse.mm(weights_t, rows.T).T
