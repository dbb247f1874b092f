"""The content peer (`variant content_knn`): an item scored by the cosine similarity of its
features to those of the user's training items, the item-based content kNN of the cold-start
literature (e.g. Gantner et al., ICDM 2010, attribute-to-feature mapping's kNN baseline;
Pazzani and Billsus, "Content-based recommendation systems", 2007):

    f_i = concat_m normalize(x_i^m) / sqrt(|modalities|)        (each modality weighs the same)
    score(u, i) = (1 / |I_u|) sum_{j in I_u} f_i . f_j

It needs no interaction of item i, so it ranks items held out of training (the cold-start
protocol, slifmr/data/cold.py); it has nothing to choose on validation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slifmr.data.format import Dataset
from slifmr.data.graphs import training_matrix
from slifmr.errors import SlifmrError


class ContentKNN(nn.Module):
    """Scores (B, N) = mean over the user's training items of the feature cosine. Buffer
    `features` (N, D) float32, the concatenated normalised modalities. Raises SlifmrError for a
    dataset without features."""

    def __init__(self, ds: Dataset):
        super().__init__()
        if not ds.features:
            raise SlifmrError(f"variant content_knn needs item features: dataset {ds.name} has no modality")
        self.register_buffer("interactions", training_matrix(ds), persistent=False)
        self.register_buffer("features", torch.zeros(ds.num_items, sum(x.shape[1] for x in ds.features.values())))
        self._ds = ds

    def fit(self) -> None:
        """Normalise and concatenate the modalities (nothing to choose)."""
        parts = [F.normalize(torch.from_numpy(x).float(), dim=1) for x in self._ds.features.values()]
        self.features.copy_(torch.cat(parts, 1) / len(parts) ** 0.5)

    def finite(self) -> bool:
        return bool(torch.isfinite(self.features).all())

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) scores of every item for the given users (B,)."""
        rows = torch.index_select(self.interactions, 0, users.to(self.features.device))  # (B, N) sparse
        return self.profiles(rows) @ self.features.T

    def profiles(self, rows: Tensor) -> Tensor:
        """(B, D): the mean features of each user's training history, `rows` (B, N) sparse of X."""
        profile = torch.sparse.mm(rows, self.features)  # the sum of the history's features
        return profile / torch.sparse.sum(rows, 1).to_dense().clamp_min(1.0)[:, None]

    def export_scores(self) -> tuple[str, Any]:
        """What its export holds (slifmr/export.py): ("dot", u = the mean of the training
        history's features, v = the features)."""
        from slifmr.model.slifmr import Representations

        return "dot", Representations(self.profiles(self.interactions), self.features)
