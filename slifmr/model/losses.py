"""Losses: BPR, sampled softmax, InfoNCE (semantic consistency) and embedding regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """-log sigmoid(u.p - u.n), mean over the batch. All inputs (B, d)."""
    return -F.logsigmoid((user * pos).sum(1) - (user * neg).sum(1)).mean()


def softmax_loss(user: Tensor, pos: Tensor, neg: Tensor, tau: float, pos_ids: Tensor, neg_ids: Tensor) -> Tensor:
    """Sampled softmax over the batch (as in SimGCL/SSM-style training of LightGCN models):
    user b's positive against every positive and sampled negative of the batch, by cosine
    similarity / tau. user, pos, neg: (B, d); pos_ids, neg_ids: (B,) item ids, so that another
    row's copy of b's own positive is not counted as a negative."""
    u = F.normalize(user, dim=1)
    cand = F.normalize(torch.cat([pos, neg]), dim=1)  # (2B, d)
    logits = u @ cand.T / tau  # (B, 2B)
    ids = torch.cat([pos_ids, neg_ids])
    rows = torch.arange(u.shape[0], device=u.device)
    same = ids[None, :] == pos_ids[:, None]
    same[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(same, float("-inf")), rows)


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
