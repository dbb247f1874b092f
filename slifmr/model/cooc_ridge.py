"""The co-occurrence ridge peer (`variant cooc_ridge`): EASE restricted to each item's most
co-occurring items, the scalable EASE-class baseline beside `ease`, and the ablation of the
self-loop's ridge head that asks the paper's question (do the neighbourhoods the fused
representations choose beat plain co-occurrence ones?).

    N_j = the ridge_k items a != j with the largest co-occurrence counts G[j, a], G = X^T X
    w_j = (G[N_j, N_j] + l2 I)^-1 G[N_j, j]                      (ridge normal equations)
    scores of user u = x_u W

EASE (Steck, WWW 2019) solves the same regression with every other item as neighbours (dense
N x N, O(N^3)); restricting each item's regressors to a sparse co-occurrence pattern is what
sparse EASE approximations do (SLIM's sparse pattern, Ning and Karypis, ICDM 2011; SANSA,
Spisak et al., RecSys 2023, keeps EASE's sparse structure). The solves are
`slifmr.model.ridge.ridge_weights`, the self-loop head's own. Against slifmr it differs in the
neighbourhoods, in scoring with the ridge part alone (slifmr blends it with the embeddings) and
in choosing l2 on validation from `model.ease_l2` (slifmr's head keeps `ridge_l2`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from slifmr.data.format import Dataset
from slifmr.data.graphs import train_edges, training_matrix
from slifmr.model.ridge import item_gram, ridge_scores, ridge_weights, weights_csr

if TYPE_CHECKING:
    from slifmr.model.graphs import RowSharding


def cooccurrence_neighbours(ui_edges: Tensor, num_users: int, num_items: int, k: int,
                            sharding: RowSharding | None = None) -> Tensor:
    """(N, min(k, N - 1)) int32: each item's most co-occurring other items (ties by the smaller
    id; an item with fewer co-occurring items is filled up with the most popular others).
    ui_edges: (2, E) training (user, item) pairs. Cost: the sum over users of degree^2, split
    across workers by `sharding` (each its block of items, one all-gather; the same lists as
    one process)."""
    from slifmr.model.neighbourhood_gram import top_cooccurring  # numba: compiled on first use

    k = min(k, num_items - 1)
    u, i = ui_edges.cpu().numpy()
    x = sp.csr_matrix((np.ones(u.size, np.int8), (u, i)), shape=(num_users, num_items))
    x.sum_duplicates()
    xc = x.tocsc()
    degree = np.diff(xc.indptr)
    fill = np.lexsort((np.arange(num_items), -degree)).astype(np.int64)  # most popular first
    start, stop = sharding[0](num_items) if sharding else (0, num_items)
    nbrs = torch.from_numpy(top_cooccurring(xc.indptr.astype(np.int64), xc.indices.astype(np.int32),
                                            x.indptr.astype(np.int64), x.indices.astype(np.int32), fill, k, start, stop))
    return sharding[1](nbrs, num_items) if sharding else nbrs


class CoocRidge(nn.Module):
    """Scores (B, N) = X[users] W, W solved on each item's `k` most co-occurring items.

    Buffers: `neighbours` (N, k) int32 and `weights` (N, k) float32 (row j: w_j on N_j), saved
    with the run; `fit(l2)` solves them for a ridge weight l2 > 0."""

    def __init__(self, ds: Dataset, k: int):
        super().__init__()
        self._edges, self._num_users = train_edges(ds), ds.num_users
        self._gram = None
        self.register_buffer("interactions", training_matrix(ds), persistent=False)
        k = min(k, max(ds.num_items - 1, 0))
        self.register_buffer("neighbours", torch.zeros(ds.num_items, k, dtype=torch.int32))
        self.register_buffer("weights", torch.zeros(ds.num_items, k))
        self._weights_t: Tensor | None = None

    def fit(self, l2: float) -> None:
        n, k = self.neighbours.shape
        if self._gram is None:  # once per run: the neighbourhoods and G do not depend on l2
            self._gram = item_gram(self._edges, self._num_users, n)
            self.neighbours.copy_(cooccurrence_neighbours(self._edges, self._num_users, n, k))
        w_t = ridge_weights(self._edges, self._num_users, n, self.neighbours, l2, self._gram)
        self.neighbours.copy_(w_t.col_indices().view(n, k).int())  # the solver's (sorted) column order
        self.weights.copy_(w_t.values().view(n, k))
        self._weights_t = w_t

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001, ANN201
        self._weights_t = None
        return super().load_state_dict(state_dict, strict, assign)

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for the given users (B,)."""
        if self._weights_t is None:
            self._weights_t = weights_csr(self.weights, self.neighbours)
        return ridge_scores(self.interactions, self._weights_t, users)

    def finite(self) -> bool:
        return bool(torch.isfinite(self.weights).all())

    def export_scores(self) -> tuple[str, Tensor]:
        """What its export holds (slifmr/export.py): ("item_item", W^T (N, N) CSR), s = x_u W."""
        return "item_item", weights_csr(self.weights, self.neighbours)
