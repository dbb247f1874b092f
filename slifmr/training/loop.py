"""The one training loop. The in-process path (`--workers 0`) and every Ray Train worker run
`train_loop`; distribution reaches it only through `Comm` (rank, world size, collectives).
The loop is the run's lifecycle; the recipe it runs composes components built from the config:
gradient training the self-loop (self_loop.py), the ridge head (ridge_head.py), a batch source
(batches.py) and the optimizer strategy (distributed/strategy.py); the closed forms their
registered model (closed_form.py). Both write through the run folder (run_folder.py)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slifmr.closed_forms import CLOSED_FORMS
from slifmr.config import Config, TrainConfig
from slifmr.data.format import VALID, Dataset
from slifmr.data.graphs import training_pairs
from slifmr.distributed.collectives import Comm
from slifmr.distributed.strategy import Strategy, make_strategy
from slifmr.errors import NonFiniteError, SlifmrError
from slifmr.evaluation import Evaluator
from slifmr.model.graphs import KnnFn, StaticGraphs
from slifmr.model.propagate import Spmm, layerwise_spmm
from slifmr.model.slifmr import SLIFMR, Representations, Triples
from slifmr.ranking import resolve_dataset
from slifmr.sampling.negative import BPRSampler
from slifmr.tracking import tracking
from slifmr.training.batches import BatchSource, build_batch_source, sparse_tables
from slifmr.training.best import final_results
from slifmr.training.build import (
    build_evaluator,
    build_model,
    cold_placement,
    set_threads,
    trained_items,
)
from slifmr.training.closed_form import ClosedFormJob
from slifmr.training.records import EpochRecord, Reporter, SeedStreams
from slifmr.training.ridge_head import RidgeHead, row_sharding
from slifmr.training.run_folder import LoopState, RunFolder
from slifmr.training.self_loop import SelfLoop


def train_loop(cfg: Config, run_dir: str | os.PathLike, comm: Comm | None = None, resume: bool = False,
               ds: Dataset | None = None, reporter: Reporter | None = None, knn_fn: KnnFn | None = None,
               resume_from: Path | None = None, evaluate_test: bool = True) -> dict[str, Any]:
    """Train until early stopping or cfg.train.epochs; returns the contents of results.json.

    `resume` continues from run_dir/checkpoint, `resume_from` from another checkpoint folder
    (the one Ray Train hands a restarted worker group). The model trains on `comm.device`.
    `evaluate_test=False` (sweep trials) never touches the test split: results.json then has
    "test": null, and the sweep evaluates only its chosen trial on test, once.

    One lifecycle for every variant: the recipe (`GradientJob`, or `ClosedFormJob` for a
    variant of slifmr/closed_forms.py) starts or resumes the run folder and yields each epoch's
    record once saved; the tracker and the reporter see each; the best epoch's test metrics end it."""
    comm = comm or Comm.current()
    set_threads(cfg, comm)
    ds = ds if ds is not None else resolve_dataset(cfg)
    run = RunFolder(Path(run_dir), comm.is_main)
    job: GradientJob | ClosedFormJob | None = (
        ClosedFormJob.build(cfg, ds, comm) if cfg.variant in CLOSED_FORMS else GradientJob.build(cfg, ds, comm, knn_fn))
    resumed = resume or resume_from is not None
    state = job.start(run, cfg, ds, resume_from if resumed else None, resumed)
    # the tracker's run ends on every exit (FAILED, KILLED on Ctrl-C), so a later run in this
    # process starts its own
    with tracking(cfg, run.path, resume=resumed, enabled=comm.is_main) as tracker:
        for rec in job.epochs(run, state, cfg, ds):
            if tracker is not None:
                tracker.log_epoch(rec.to_json())
            if reporter is not None:
                reporter(rec.to_json(), job.reported(run) if comm.is_main else None)
        comm.barrier()  # rank 0 has written best/ before anyone loads it
        # the best epoch is read back from disk: the training replica, its optimizer state and the
        # last epoch's graphs go first, so the two never share memory (OOM at 10^6 users, 2 workers)
        evaluator, static = job.evaluator, job.static
        job = None
        results = final_results(cfg, ds, run, evaluator, comm, evaluate_test, static=static)
        if tracker is not None:
            tracker.finish(results)
    return results


@dataclass
class GradientJob:
    """What gradient training composes, built from the config: the model and its static graphs,
    the optimizer strategy, the BPR sampler, the evaluator, the batch source, the self-loop and
    the ridge head (None without one), over `comm`'s workers."""

    model: SLIFMR
    static: StaticGraphs
    strategy: Strategy
    sampler: BPRSampler
    steps_per_epoch: int
    evaluator: Evaluator
    batches: BatchSource
    self_loop: SelfLoop
    head: RidgeHead | None
    spmm: Spmm
    comm: Comm

    @classmethod
    def build(cls, cfg: Config, ds: Dataset, comm: Comm, knn_fn: KnnFn | None = None) -> GradientJob:
        """Raises SlifmrError when the dataset has fewer training interactions than workers."""
        t, seeds = cfg.train, SeedStreams.of(cfg.train.seed)
        spmm = layerwise_spmm(sharding=row_sharding(comm))
        sparse = sparse_tables(t)
        model, static = build_model(cfg, ds, comm, sparse_tables=sparse)
        model.to(comm.device)
        comm.broadcast_parameters(model.parameters())
        users, items = training_pairs(ds)
        if users.numel() < comm.world_size:  # every worker needs a shard: refuse before any work
            raise SlifmrError(f"{comm.world_size} workers but dataset {ds.name} has {users.numel()} training "
                              f"interaction(s): use --workers {max(users.numel(), 1)} or fewer")
        # train.batch_size is the global batch: each of the world_size workers takes its share, so
        # N workers take the same optimisation steps as one
        per_worker = max(1, t.batch_size // comm.world_size)
        strategy = make_strategy(
            t.strategy, model, comm, lr=t.lr, weight_decay=t.weight_decay, zero_stage=t.zero_stage,
            micro_batch=per_worker, row_sparse=model.embedding_tables(), sparse_tables=sparse,
            # full-graph steps give every table row a gradient: auto means dense there
            grad_sync="dense" if t.grad_sync == "auto" and not sparse else t.grad_sync)
        place_cold = cold_placement(cfg, ds)
        sampler = BPRSampler(users, items, ds.num_items, per_worker, seed=seeds.negatives, rank=comm.rank,
                             world_size=comm.world_size, candidates=trained_items(ds) if place_cold else None)
        return cls(model, static, strategy, sampler, min(len(sampler), t.steps_per_epoch or len(sampler)),
                   build_evaluator(t, ds, comm), build_batch_source(t, model.view_layers, comm, seeds.neighbors, spmm),
                   SelfLoop.build(cfg.model, static, comm, seeds.knn, knn_fn), RidgeHead.build(cfg.model.head, static, comm, place_cold), spmm, comm)

    @property
    def search_k(self) -> int:
        """How many of Z(t-1)'s neighbours the fusion's search returns for the ridge head."""
        return self.head.search_k if self.head else 0

    def validate(self, reps: Representations, stop_metric: str,
                 all_reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The epoch's validation metrics, ranked with the ridge head when there is one."""
        if self.head is None:
            return self.evaluator.evaluate(reps.full_scores, VALID, all_reduce)
        return self.head.validate(self.evaluator, reps, stop_metric, all_reduce)

    def start(self, run: RunFolder, cfg: Config, ds: Dataset, checkpoint: Path | None, resume: bool) -> LoopState:
        """A new run folder, or the state of the checkpoint it resumes (model, optimizer, self-loop)."""
        from slifmr import log

        state = LoopState()
        if not resume:
            run.create(cfg)
            return state
        ckpt = run.resume(cfg, ds, checkpoint)
        self.model.load_state_dict(ckpt["model"])
        self.strategy.load_state_dict(ckpt["optimizer"])
        state.load_state_dict(ckpt)
        self.self_loop.load_state_dict(ckpt)
        if self.head is not None:
            self.head.load_state_dict(ckpt)
        log.info(f"resuming {run.path} at epoch {state.epoch + 1} (best so far: epoch {state.stopper.best_epoch})")
        if state.stopper.bad_epochs >= cfg.train.patience:
            log.info(f"the run had already stopped early ({state.stopper.bad_epochs} epochs without a better "
                     f"{cfg.train.stop_metric}, patience {cfg.train.patience}): nothing more to train")
        return state

    def reported(self, run: RunFolder) -> Path:
        """The folder a sweep's or Ray Train's reporter hands Ray with each line: the latest checkpoint."""
        return run.checkpoint

    def epochs(self, run: RunFolder, state: LoopState, cfg: Config, ds: Dataset) -> Iterator[EpochRecord]:
        """Each epoch is the method (architecture.md §4): Z(t-1) -> S(t) -> the epoch's graphs ->
        steps -> Z(t) -> validation -> checkpoint; yields its record once saved, until early
        stopping or train.epochs."""
        t, seeds, comm = cfg.train, SeedStreams.of(cfg.train.seed), self.comm
        for epoch in range(state.epoch + 1, t.epochs + 1):
            if state.stopper.bad_epochs >= t.patience:
                break
            clock, generator = EpochClock(comm), seeds.epoch_generator(epoch)
            self.strategy.set_lr(learning_rate(t, epoch))
            graphs, fusion = self.self_loop.graphs_for(self.model, epoch, generator, self.search_k)  # Z(t-1) -> S(t)
            fusion["ridge"] = self.head.begin_epoch(self.self_loop.z_neighbours) if self.head else 0.0  # W(t)
            clock.lap("fusion")
            self.batches.begin_epoch(self.model, graphs, epoch)
            triples = self.sampler.epoch(epoch)  # the epoch's shuffle and negatives: outside the steps' time
            clock.lap("prepare")
            loss, steps = train_steps(self, triples, epoch, generator, run)
            clock.lap("train")
            self.batches.end_epoch()
            graphs = self.model.attend(graphs)  # KGAT: attention from the epoch's trained weights
            clock.lap("attend")
            reps = self.model.representations(graphs, self.spmm)
            if not reps.finite():  # equal on every rank
                raise NonFiniteError(f"epoch {epoch}: the user or item representations are not finite after the "
                                     f"epoch's steps; {run.stopped_hint(epoch)}")
            self.self_loop.end_epoch(graphs, reps)  # Z(t): the next fusion's input
            valid = self.validate(reps, t.stop_metric, comm.all_reduce_sum)  # the head (and its blend) chosen here
            state.epoch, graphs, reps = epoch, None, None
            clock.lap("eval")
            rec = clock.record(epoch, loss, valid, state.stopper.step(valid[t.stop_metric], epoch), steps, fusion, self)
            self.save_epoch(run, state, rec, cfg, ds)
            yield rec

    def save_epoch(self, run: RunFolder, state: LoopState, rec: EpochRecord, cfg: Config, ds: Dataset) -> None:
        """The epoch's checkpoint, best/ and metrics line (rank 0; every rank checks finiteness)."""
        optimizer = self.strategy.state_dict()  # a collective under ZeRO: every rank calls it
        head, head_best = (self.head.state_dict(), self.head.best_state()) if self.head else ({}, {})
        run.save_epoch(rec, self.model.state_dict(), optimizer, {**state.state_dict(), **self.self_loop.state_dict(), **head},
                       {**self.self_loop.best_state(), **head_best}, run.meta(cfg, ds, rec.epoch),
                       rec.line(cfg.train.epochs, cfg.train.stop_metric))


def train_steps(job: GradientJob, triples: Iterator[Triples], epoch: int, generator: torch.Generator,
                run: RunFolder) -> tuple[dict[str, float], int]:
    """The epoch's optimisation steps: (mean of each loss part, steps taken). Raises
    NonFiniteError, naming the loss part, when a loss or averaged gradient is not finite."""
    from slifmr import log

    totals: dict[str, float] = {}
    n_steps = 0
    for step, batch_triples in enumerate(log.progress(triples, desc=f"epoch {epoch}", total=job.steps_per_epoch)):
        if step >= job.steps_per_epoch:
            break
        job.batches.before_step(step)
        parts = job.strategy.module(job.batches.batch(batch_triples, epoch, step, generator))  # model or its wrapper
        if not job.strategy.step(parts["loss"]):  # a non-finite loss (any rank) or averaged gradient
            # the loss is the sum of the parts: a bad part makes it non-finite, so this names it
            bad = next((k for k, v in parts.items() if not math.isfinite(float(v.detach()))), None)
            what = (f"loss part '{bad}' is {float(parts[bad].detach())}" if bad
                    else "the loss on another worker or the averaged gradient is not finite")
            raise NonFiniteError(f"epoch {epoch}, step {step + 1}: {what}; {run.stopped_hint(epoch)}")
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach())
        n_steps += 1
    return {k: v / max(n_steps, 1) for k, v in totals.items()}, n_steps


class EpochClock:
    """An epoch's wall-clock phases (fusion, prepare, train, eval) and its metrics.jsonl record."""

    def __init__(self, comm: Comm):
        self.comm, self.started, self.start = comm, time.time(), time.perf_counter()
        comm.take_counters()  # collectives counted from here
        self.last, self.seconds = self.start, {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase], self.last = now - self.last, now

    def record(self, epoch: int, loss: dict[str, float], valid: dict[str, float], is_best: bool, steps: int,
               fusion: dict[str, float], job: GradientJob) -> EpochRecord:
        comm_seconds, grad_bytes = self.comm.take_counters()
        sl, head = job.self_loop, job.head
        return EpochRecord(
            epoch=epoch, loss=loss, valid=valid, is_best=is_best, epoch_seconds=time.perf_counter() - self.start,
            fusion_seconds=self.seconds["fusion"], knn_seconds=fusion["knn"], ridge_seconds=fusion["ridge"],
            ridge_weight=head.blend if head else None, head=head.summary() if head else None,
            choice_seconds=head.seconds["choice"] if head else 0.0, comm_seconds=comm_seconds, train_seconds=self.seconds["train"],
            sampling_seconds=job.batches.seconds["sampling"], memory_seconds=job.batches.seconds["memory"],
            eval_seconds=self.seconds["eval"], steps=steps, grad_bytes_per_step=grad_bytes / max(steps, 1),
            knn_recall=getattr(sl.knn, "recall", None), epoch_start_unix_seconds=self.started,
            fused=sl.corr_epoch == epoch)


def learning_rate(t: TrainConfig, epoch: int) -> float:
    """Epoch `epoch`'s (1-based) learning rate under train.lr_schedule: a function of the epoch
    alone, so a resumed run continues the schedule. cosine: lr (1 + cos(pi (epoch - 1) /
    epochs)) / 2 (SGDR without restarts, Loshchilov and Hutter, ICLR 2017, eq. 5);
    exponential: lr * lr_gamma^(epoch - 1)."""
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / t.epochs))
    if t.lr_schedule == "exponential":
        return t.lr * t.lr_gamma ** (epoch - 1)
    return t.lr
