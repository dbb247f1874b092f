"""Row-wise lazy Adam for embedding tables with sparse gradients (architecture.md §4).

The same update as torch's SparseAdam (Adam on the rows a step touched, the other rows and
their moments left as they are; Kingma and Ba, ICLR 2015, Algorithm 1 applied per row), with
the moments read and written by row index: `index_select`, the Adam arithmetic on the touched
rows, `index_copy_`. SparseAdam builds three sparse tensors and two `sparse_mask`s per table
per step; this avoids them (benchmarks/RESULTS.md, "Scale: sampled and history training", compares the two), with
updates equal to float32 rounding. TorchRec's fused
row-wise optimizers work the same way. The state (`step`, `exp_avg`, `exp_avg_sq` per table)
and hyper-parameters are SparseAdam's, so checkpoints load into either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


class RowWiseAdam(torch.optim.Optimizer):
    """Adam over the rows of each parameter's sparse (COO) gradient; parameters (rows, d)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"RowWiseAdam: invalid lr {lr}, betas {betas} or eps {eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "maximize": False})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient. Raises RuntimeError on a dense
        gradient (use Adam there)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowWiseAdam takes sparse gradients (nn.Embedding(sparse=True)); use Adam")
                grad = p.grad.coalesce()  # a row looked up twice: one update of the summed gradient
                rows, values = grad.indices()[0], grad.values()
                if values.numel() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                if group["maximize"]:
                    values = -values
                exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.index_add_(0, rows, exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"])), alpha=-step_size)
        return loss
