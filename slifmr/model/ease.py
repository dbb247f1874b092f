"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): a
closed-form item-item model, the strongest simple baseline on MovieLens-type data.

    B = argmin ||X - X B||^2 + lambda ||B||^2  s.t. diag(B) = 0
      = I - P / diag(P),  P = (X^T X + lambda I)^-1          (Steck 2019, eq. 8)

X (M, N) is the binary matrix of training interactions; scores are X_u B. lambda is chosen on
validation Recall@K from a grid (`model.ease_l2`). Everything is dense N x N: the float64 Gram
matrix, a regularised copy and its inverse while solving, then float32 weights, about 32 N^2
bytes at the peak (13 GB at 20,000 items) and O(N^3) time per ridge weight, so EASE stops at
EASE_MAX_ITEMS items.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slifmr.data.format import Dataset
from slifmr.data.graphs import training_matrix
from slifmr.errors import SlifmrError

EASE_MAX_ITEMS = 20_000


def gram(ds: Dataset) -> Tensor:
    """X^T X (N, N) float64 of the binary training matrix."""
    x = training_matrix(ds, torch.float64)
    return (x.t().coalesce() @ x).to_dense()


def ease_weights(g: Tensor, l2: float) -> Tensor:
    """B (N, N) float32 from the Gram matrix g = X^T X and the ridge weight `l2` > 0
    (Steck 2019, eq. 8): zero diagonal, B_ij = -P_ij / P_jj."""
    a = g.clone()
    a.diagonal().add_(l2)
    p = torch.linalg.inv(a)
    del a
    p.div_(-torch.diagonal(p).clone()[None, :])
    p.fill_diagonal_(0.0)
    return p.float().contiguous()  # LAPACK's inverse may come column-major: products want rows


class EASE(nn.Module):
    """Scores (B, N) = X[users] @ B, with X the training interactions of `ds`.

    The weights are a buffer: EASE has nothing to train by gradient. Raises SlifmrError for a
    catalogue above EASE_MAX_ITEMS."""

    def __init__(self, ds: Dataset, weights: Tensor | None = None):
        super().__init__()
        if ds.num_items > EASE_MAX_ITEMS:
            raise SlifmrError(f"variant ease inverts a dense {ds.num_items:,} x {ds.num_items:,} matrix: it stops at "
                              f"{EASE_MAX_ITEMS:,} items (about {32 * EASE_MAX_ITEMS**2 / 1e9:.0f} GB while solving)")
        self._ds, self._gram = ds, None
        self.register_buffer("interactions", training_matrix(ds), persistent=False)  # COO: index_select picks user rows
        self.register_buffer("weights", weights if weights is not None else torch.zeros(ds.num_items, ds.num_items))

    def fit(self, l2: float) -> None:
        """Solve B for the ridge weight l2 > 0 (G = X^T X computed on the first call)."""
        if self._gram is None:
            self._gram = gram(self._ds)
        self.weights.copy_(ease_weights(self._gram, l2))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.weights).all())

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for the given users (B,)."""
        rows = torch.index_select(self.interactions, 0, users.to(self.weights.device))
        return torch.sparse.mm(rows, self.weights)

    def export_scores(self) -> tuple[str, Tensor]:
        """What its export holds (slifmr/export.py): ("item_item", W^T (N, N)), s = x_u W."""
        return "item_item", self.weights.T
