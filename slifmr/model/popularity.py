"""The most-popular baseline (`variant pop`): every user gets the items with the most training
interactions, their own seen items removed (as every slifmr ranking does). The floor any
personalised recommender must clear (e.g. Cremonesi et al., RecSys 2010; RecBole's `Pop`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slifmr.data.format import Dataset
from slifmr.data.graphs import train_edges


class Popularity(nn.Module):
    """Scores (B, N): each item's training interaction count, the same for every user.

    Buffer `counts` (N,) float32, saved with the run; `fit` counts them (no parameter to choose)."""

    def __init__(self, ds: Dataset):
        super().__init__()
        self._items, self._num_items = train_edges(ds)[1], ds.num_items
        self.register_buffer("counts", torch.zeros(ds.num_items))

    def fit(self) -> None:
        """Count each item's training interactions."""
        self.counts = torch.bincount(self._items.long(), minlength=self._num_items).float().to(self.counts.device)

    def finite(self) -> bool:
        return bool(torch.isfinite(self.counts).all())

    def full_scores(self, users: Tensor) -> Tensor:
        """(B, N) the item counts for users (B,)."""
        return self.counts.expand(users.numel(), -1)

    def export_scores(self) -> tuple[str, Tensor]:
        """What its export holds (slifmr/export.py): ("popularity", counts (N,))."""
        return "popularity", self.counts
