"""implicit's iALS as a peer (`variant ials`): the matrix factorisation for implicit feedback of
Hu, Koren and Volinsky (ICDM 2008), fitted by the `implicit` library users already pick
(implicit.cpu.als.AlternatingLeastSquares, conjugate-gradient ALS), in slifmr's harness and
split, its regularisation and confidence weight chosen on validation as `ease` chooses lambda
(Rendle et al., "Revisiting the Performance of iALS on Item Recommendation Benchmarks",
RecSys 2022, tune both):

    min_{U, V} sum_{u, i} c_ui (p_ui - u_u . v_i)^2 + reg (||U||^2 + ||V||^2),
    p_ui = 1 if (u, i) is a training interaction, c_ui = 1 + alpha p_ui

Scores (B, N) = U[users] V^T. The optional extra `peers` brings `implicit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from slifmr.data.format import Dataset
from slifmr.data.graphs import train_edges
from slifmr.errors import SlifmrError


class IALS(nn.Module):
    """iALS with `factors` latent dimensions, `iterations` ALS sweeps, seeded by `seed`.

    Buffers `user_factors` (M, f) and `item_factors` (N, f) float32, saved with the run;
    `fit(alpha, reg)` fits them. Raises SlifmrError when `implicit` is not installed."""

    def __init__(self, ds: Dataset, factors: int, iterations: int = 15, seed: int = 0, threads: int = 0):
        super().__init__()
        u, i = train_edges(ds).numpy()
        x = sp.csr_matrix((np.ones(u.size, np.float32), (u, i)), shape=(ds.num_users, ds.num_items))
        x.sum_duplicates()
        x.data[:] = 1.0
        self._x, self._factors, self._iterations, self._seed, self._threads = x, factors, iterations, seed, threads
        self.register_buffer("user_factors", torch.zeros(ds.num_users, factors))
        self.register_buffer("item_factors", torch.zeros(ds.num_items, factors))

    def fit(self, alpha: float, reg: float) -> None:
        """Fit U and V for confidence weight `alpha` and regularisation `reg`."""
        try:
            from implicit.cpu.als import AlternatingLeastSquares
        except ImportError as e:
            raise SlifmrError("variant ials needs the implicit library: pip install 'slifmr[peers]'") from e
        als = AlternatingLeastSquares(factors=self._factors, regularization=reg, alpha=alpha,
                                      iterations=self._iterations, random_state=self._seed, num_threads=self._threads)
        als.fit(self._x, show_progress=False)
        self.user_factors.copy_(torch.from_numpy(np.ascontiguousarray(als.user_factors)))
        self.item_factors.copy_(torch.from_numpy(np.ascontiguousarray(als.item_factors)))

    def finite(self) -> bool:
        return bool(torch.isfinite(self.user_factors).all()) and bool(torch.isfinite(self.item_factors).all())

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for the given users (B,)."""
        return self.user_factors[users.to(self.user_factors.device)] @ self.item_factors.T

    def export_scores(self) -> tuple[str, Any]:
        """What its export holds (slifmr/export.py): ("dot", the factors), s = u . v."""
        from slifmr.model.slifmr import Representations

        return "dot", Representations(self.user_factors, self.item_factors)
