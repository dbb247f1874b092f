"""Losses: BPR, InfoNCE (semantic consistency) and embedding regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """-log sigmoid(u.p - u.n), mean over the batch. All inputs (B, d)."""
    return -F.logsigmoid((user * pos).sum(1) - (user * neg).sum(1)).mean()


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE between two views (B, d) of the same B items: row i of a and b
    are positives, the other items of the batch negatives."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / tau
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def l2_reg(*tensors: Tensor) -> Tensor:
    """Sum of squared entries / batch size (LightGCN's regulariser on ego embeddings)."""
    return sum(t.pow(2).sum() for t in tensors) / (2 * tensors[0].shape[0])
