"""How replicas stay identical: the optimisation step of each `--strategy`.

    ddp        plain Adam on every replica; gradients averaged by one flat all-reduce per step
               (or torch's DistributedDataParallel, grad_sync ddp), embedding tables
               optionally by their touched rows only (grad_sync sparse/auto)
    deepspeed  DeepSpeed ZeRO stage 1 (optimizer state sharded) or 2 (gradients too), on the
               process group Ray Train already set up (gloo on CPU, nccl on GPU)

The training loop sees only `module` (what it calls for the loss parts: the model, or its DDP /
DeepSpeed wrapper), `step(loss) -> applied`, `state_dict()` and `load_state_dict(state)`.
`step` applies no update when any rank's loss or the averaged gradient is not finite and returns
False on every rank (the decision is the same everywhere, so no rank is left waiting in a
collective).
The checkpointed optimizer state holds tensors and plain values only (it loads with
torch.load(weights_only=True)); for ZeRO it is every rank's partition, gathered on rank 0.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from slifmr.config import CHOICES
from slifmr.distributed.collectives import Comm
from slifmr.distributed.rowwise import RowWiseAdam
from slifmr.errors import SlifmrError

STRATEGIES = CHOICES["train.strategy"]


class Strategy(Protocol):
    module: nn.Module  # what the loop calls for the loss parts: the model or its DDP / DeepSpeed wrapper

    def step(self, loss: Tensor) -> bool: ...
    def set_lr(self, lr: float) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _set_lr(optimizers: list[Any], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups if opt is not None else ():
            group["lr"] = lr


class DDPStrategy:
    """Adam on a full replica; gradients averaged across ranks before each step.

    grad_sync dense (full-graph steps, and auto there): one flat all-reduce of every gradient
    after backward (`Comm.average_gradients`). grad_sync ddp: torch's DistributedDataParallel
    wraps the model (`module`) and all-reduces in buckets during backward; its communication
    overlaps backward, so the epoch record's comm_seconds stays 0 (the bytes are counted). The
    hand-written exchange stays the default because it measured faster with 2 gloo workers on
    CPU at 10^4 and 10^5 users (benchmarks/RESULTS.md, "Same numbers across code changes"); try ddp on GPUs, where
    NCCL overlaps communication with backward.

    `sparse_tables`: the `row_sparse` embedding tables get sparse gradients (neighbor-sampled
    steps look up a few rows) and a row-wise lazy Adam (`RowWiseAdam`: SparseAdam's update,
    as TorchRec's row-wise optimizers): a step costs O(rows touched), not O(table), in compute as in
    communication. The other parameters keep dense Adam. Their gradients are exchanged by
    `Comm.average_gradients`: the touched rows only (grad_sync sparse, or auto when smaller),
    which moves half the bytes of a dense all-reduce at 10^6 users (benchmarks/RESULTS.md,
    scale table), a case DDP has no exchange for."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, comm: Comm,
                 row_sparse: list[Tensor] | None = None, grad_sync: str = "dense", sparse_tables: bool = False):
        self.params = list(model.parameters())
        self.row_sparse, self.grad_sync = row_sparse or [], grad_sync
        tables = {id(p) for p in self.row_sparse} if sparse_tables else set()
        dense = [p for p in self.params if id(p) not in tables]
        # None when the tables are all there is (variant mf with sampled steps). Fused Adam: one
        # kernel over every tensor instead of one per tensor, which dominates small models' updates
        fused = all(p.device.type in ("cpu", "cuda") for p in dense) or None
        self.optimizer = torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=fused) if dense else None
        self.table_optimizer = RowWiseAdam(self.row_sparse, lr=lr) if sparse_tables else None
        self.comm = comm
        self.module: nn.Module = model
        if comm.world_size > 1 and grad_sync == "ddp" and not sparse_tables:
            # static_graph: the same parameters take part in every step; some never get a
            # gradient (the KG attention's, which is computed without autograd)
            self.module = DistributedDataParallel(model, device_ids=[comm.device] if comm.device.type == "cuda" else None,
                                                  broadcast_buffers=False, static_graph=True)
            self.module.register_comm_hook(comm, _counted_allreduce)

    def step(self, loss: Tensor) -> bool:
        """Backward, average, update; False (and no update) when any rank's loss or the
        averaged gradient is not finite. The loss check is one scalar all-reduce (a loss can be
        inf with finite gradients); the gradient check reads the averaged gradients, which are
        equal on every rank. Either way every rank decides alike."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if self.table_optimizer is not None:
            self.table_optimizer.zero_grad(set_to_none=True)
        if not loss_finite_everywhere(loss, self.comm):  # an inf loss can have finite gradients
            return False
        loss.backward()  # DDP all-reduces in its backward hooks
        if not isinstance(self.module, DistributedDataParallel):
            self.comm.average_gradients(self.params, self.row_sparse, self.grad_sync)
        if not gradients_finite(self.params):
            return False
        if self.optimizer is not None:
            self.optimizer.step()
        if self.table_optimizer is not None:
            self.table_optimizer.step()
        return True

    def set_lr(self, lr: float) -> None:
        """The learning rate of every parameter group from now on (train.lr_schedule)."""
        _set_lr([self.optimizer, self.table_optimizer], lr)

    def state_dict(self) -> dict[str, Any]:
        if self.table_optimizer is None:
            return self.optimizer.state_dict()
        return {"dense": None if self.optimizer is None else self.optimizer.state_dict(),
                "tables": self.table_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.table_optimizer is None:
            self._load_dense(state)
        else:
            if self.optimizer is not None:
                self._load_dense(state["dense"])
            self.table_optimizer.load_state_dict(state["tables"])

    def _load_dense(self, state: dict[str, Any]) -> None:
        """Adam's state, keeping this run's `fused` choice: a checkpoint saved before fused Adam
        holds fused=None in its groups, which torch would otherwise restore."""
        fused = self.optimizer.param_groups[0]["fused"]
        self.optimizer.load_state_dict({**state, "param_groups": [{**g, "fused": fused} for g in state["param_groups"]]})


ZERO_MISSING = "--strategy deepspeed needs DeepSpeed: pip install 'slifmr[zero]'"


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 1 or 2 around the same Adam; the engine is the `module` the loop
    calls, and runs backward() and step()."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, comm: Comm,
                 zero_stage: int, micro_batch: int):
        try:
            import deepspeed
        except ImportError:
            raise SlifmrError(ZERO_MISSING) from None

        # DeepSpeed's ZeRO calls a collective torch 2.13 deprecates, once per step
        warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)

        adam = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        config = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": zero_stage},
            "zero_allow_untested_optimizer": True,  # plain torch Adam, no fused CUDA op needed
            "steps_per_print": 10**9,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=adam, config=config, dist_init_required=False)
        self.comm = comm
        self.zero_stage = zero_stage
        self.module: nn.Module = self.engine

    def step(self, loss: Tensor) -> bool:
        """False (and no update) when any rank's loss is not finite (one scalar all-reduce).
        ZeRO keeps gradients in partitions, so a non-finite gradient under a finite loss is
        caught one step later, or by the loop's end-of-epoch check of the representations."""
        if not loss_finite_everywhere(loss, self.comm):
            return False
        self.engine.backward(loss)
        self.engine.step()
        return True

    def set_lr(self, lr: float) -> None:
        """The learning rate of every parameter group from now on (train.lr_schedule)."""
        _set_lr([self.optimizer], lr)

    def _partition(self) -> dict[str, Any]:
        sd = self.optimizer.state_dict()
        return {"base": sd["base_optimizer_state"],
                "fp32": [t.detach().cpu() for t in sd["single_partition_of_fp32_groups"]]}

    def state_dict(self) -> dict[str, Any]:
        """Every rank's partition (a collective: all ranks call it); rank 0 saves it."""
        parts = [None] * self.comm.world_size
        if self.comm.world_size > 1:
            torch.distributed.all_gather_object(parts, self._partition())
        else:
            parts = [self._partition()]
        return {"zero_stage": self.zero_stage, "world_size": self.comm.world_size, "partitions": parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "partitions" not in state:
            raise SlifmrError("the checkpoint was written by --strategy ddp; resume it with --strategy ddp")
        if state["world_size"] != self.comm.world_size or state["zero_stage"] != self.zero_stage:
            raise SlifmrError(
                f"the checkpoint holds ZeRO stage {state['zero_stage']} state of {state['world_size']} workers; "
                f"resume it with --workers {state['world_size']} --zero-stage {state['zero_stage']}")
        mine = state["partitions"][self.comm.rank]
        sd = self.optimizer.state_dict()
        sd["base_optimizer_state"] = mine["base"]
        sd["single_partition_of_fp32_groups"] = mine["fp32"]
        # DeepSpeed reads entry [rank] of a per-rank list; ours is the same entry repeated
        self.optimizer.load_state_dict([sd] * self.comm.world_size, load_from_fp32_weights=True)


def _counted_allreduce(comm: Comm, bucket):  # noqa: ANN001, ANN202
    """DDP's default all-reduce of a gradient bucket (a dist.GradBucket; DDP checks the hook's
    annotations as objects, so they are left off), its bytes counted in the epoch record."""
    comm.traffic["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
    return default_hooks.allreduce_hook(None, bucket)


def loss_finite_everywhere(loss: Tensor, comm: Comm) -> bool:
    """True when the loss is finite on every rank (in one process: this loss)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0])
    return float(comm.all_reduce_sum(bad)[0]) == 0


def gradients_finite(params: list[Tensor]) -> bool:
    """True when no parameter's gradient holds a NaN or inf: one float64 sum per gradient (NaN
    and inf survive a sum; float64 does not overflow on finite float32 values), then one
    check, so the cost is one read of the gradients."""
    sums = [(p.grad._values() if p.grad.is_sparse else p.grad).sum(dtype=torch.float64)
            for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def make_strategy(name: str, model: nn.Module, comm: Comm, *, lr: float, weight_decay: float = 0.0,
                  zero_stage: int = 2, micro_batch: int = 1, row_sparse: list[Tensor] | None = None,
                  grad_sync: str = "dense", sparse_tables: bool = False) -> Strategy:
    """`row_sparse` / `grad_sync` / `sparse_tables`: see DDPStrategy (DeepSpeed: dense only)."""
    if name == "ddp":
        return DDPStrategy(model, lr, weight_decay, comm, row_sparse, grad_sync, sparse_tables)
    if name == "deepspeed":
        return DeepSpeedStrategy(model, lr, weight_decay, comm, zero_stage, micro_batch)
    raise ValueError(f"strategy {name!r}: config.validate admits only {', '.join(STRATEGIES)}")
