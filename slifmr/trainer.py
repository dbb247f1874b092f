"""The one training loop. The in-process path (`--workers 0`) and every Ray Train worker run
`train_loop`; distribution reaches it only through `Comm` (rank, world size, collectives).

Run folder:
    config.yaml          the resolved configuration
    metrics.jsonl        one line per epoch: losses, validation metrics, timings
    checkpoint/          latest: model, optimizer, epoch, early stopping, RNG, last Z, S(t) and
                         the ridge head's neighbours
    best/                the model at the best validation epoch, its S(t) and neighbours
    results.json         best epoch, its validation metrics, the test metrics (read once)
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slifmr import __version__, log
from slifmr.atomic import write_text
from slifmr.config import (
    CLOSED_FORM,
    Config,
    ModelConfig,
    TrainConfig,
    save_config,
)
from slifmr.data.format import TEST, VALID, Dataset
from slifmr.data.graphs import training_pairs
from slifmr.distributed.checkpoint import first_nonfinite, load_checkpoint, save_checkpoint
from slifmr.distributed.collectives import Comm
from slifmr.distributed.knn import KnnSearch
from slifmr.distributed.strategy import Strategy, make_strategy
from slifmr.errors import NonFiniteError, SlifmrError
from slifmr.evaluation import Evaluator, Scorer
from slifmr.model.cooc_ridge import CoocRidge
from slifmr.model.ease import EASE
from slifmr.model.graphs import (
    EpochGraphs,
    Graph,
    KnnFn,
    StaticGraphs,
    correlation_from_neighbours,
    epoch_graphs,
    fusion_due,
)
from slifmr.model.popularity import Popularity
from slifmr.model.propagate import RowSharding, layerwise_spmm
from slifmr.model.ridge import ridge_weights
from slifmr.model.slifmr import SLIFMR, Representations, TrainingBatch, Triples
from slifmr.ranking import check_compatible, resolve_dataset, save_ranking
from slifmr.report import read_run
from slifmr.rng import derive_seed
from slifmr.sampling.history import HopKey, HopMemory, history_batch, history_fanouts, record_memory
from slifmr.sampling.negative import BPRSampler
from slifmr.sampling.neighbor import (
    BatchSubgraphs,
    EdgeType,
    backend,
    epoch_graph,
    sampled_batch,
    view_fanouts,
)
from slifmr.tracking import tracking

Reporter = Callable[[dict[str, Any], Path | None], None]  # (epoch metrics, checkpoint folder)


@dataclass(frozen=True)
class SeedStreams:
    """The run's named random streams, all derived from train.seed (the values predate the
    names and are kept, so a seed's results reproduce across versions)."""

    init: int  # parameter initialisation
    graphs: int  # per epoch: edge pruning, InfoNCE subsample, TransR triples (derive_seed(graphs, epoch))
    negatives: int  # BPR shuffle and negatives
    neighbors: int  # neighbour sampling
    knn: int  # rows of the approximate kNN's recall check
    eval_users: int  # the users evaluated with train.eval_users

    @staticmethod
    def of(seed: int) -> SeedStreams:
        return SeedStreams(init=seed, graphs=seed, negatives=seed + 1, neighbors=seed + 2, knn=seed, eval_users=seed)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The epoch's generator: a pure function of (seed, epoch), the same on every rank."""
        return torch.Generator().manual_seed(derive_seed(self.graphs, epoch))


@dataclass
class EarlyStopping:
    best: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's validation value; True when it is the best so far."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch besides model and optimizer: the last finished
    epoch, early stopping, Z(t-1) (N, d) and S(t). Checkpointed with the torch RNG state."""

    epoch: int = 0
    stopper: EarlyStopping = field(default_factory=EarlyStopping)
    last_z: torch.Tensor | None = None
    corr: Graph | None = None
    corr_epoch: int | None = None
    neighbours: torch.Tensor | None = None  # (N, k) of Z(t-1): the ridge head's regressors
    item_ridge: torch.Tensor | None = None  # W(t)^T solved on them (not saved: the neighbours give it back)
    ridge_weight: float | None = None  # the blend of the last validation (model.ridge_blend)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "early_stopping": vars(self.stopper).copy(),
            "rng": {"torch": torch.get_rng_state()},  # samplers and graphs reseed per epoch
            "last_z": self.last_z,
            "corr": None if self.corr is None else {"edge_index": self.corr[0], "weight": self.corr[1]},
            "neighbours": self.neighbours,
            "corr_epoch": self.corr_epoch,
            "ridge_weight": self.ridge_weight,
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.epoch = int(state["epoch"])
        self.stopper = EarlyStopping(**state["early_stopping"])
        torch.set_rng_state(state["rng"]["torch"])
        self.last_z = None if state.get("last_z") is None else state["last_z"].to(device)
        corr = state.get("corr")
        self.corr = None if corr is None else (corr["edge_index"], corr["weight"])
        self.neighbours = state.get("neighbours")
        self.corr_epoch = state.get("corr_epoch")
        self.ridge_weight = state.get("ridge_weight")


@dataclass
class EpochRecord:
    """One line of metrics.jsonl (seconds are wall-clock; comm, kNN and sampling are parts of
    the epoch, train_seconds is the steps alone)."""

    epoch: int
    loss: dict[str, float]
    valid: dict[str, float]
    is_best: bool
    epoch_seconds: float
    fusion_seconds: float = 0.0
    knn_seconds: float = 0.0
    ridge_seconds: float = 0.0  # the ridge head's solves (part of fusion_seconds)
    comm_seconds: float = 0.0
    train_seconds: float = 0.0
    sampling_seconds: float = 0.0
    memory_seconds: float = 0.0  # train.sampling=history: refreshing the historical embeddings
    eval_seconds: float = 0.0
    steps: int = 0
    grad_bytes_per_step: float = 0.0
    knn_recall: float | None = None
    epoch_start_unix_seconds: float = 0.0  # gaps between epochs = time outside the loop
    fused: bool = False
    l2: float | None = None  # closed-form variants: the ridge weight of this line
    ridge_weight: float | None = None  # with the ridge head: the blend validation chose (model.ridge_blend)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("l2", "ridge_weight")}


def set_threads(cfg: Config, comm: Comm) -> None:
    """Each process gets the threads of the cores it owns: oversubscription costs 10x here."""
    n = cfg.train.threads or max(1, (os.cpu_count() or 1) // max(comm.world_size, 1))
    torch.set_num_threads(n)


def build_model(cfg: Config, ds: Dataset, comm: Comm | None = None, sparse_tables: bool = False,
                static: StaticGraphs | None = None) -> tuple[SLIFMR, StaticGraphs]:
    """The model and the static graphs it trains on. The one-time multimodal kNN graph uses
    model.knn (exact: sharded over `comm`'s workers; approx: faiss, reproducible, for large
    catalogues). `sparse_tables`: see SLIFMR. `static`: graphs already built for this config
    and dataset (reused, not rebuilt)."""
    if static is None:
        sharded = comm is not None and comm.world_size > 1
        search = KnnSearch(comm, cfg.model.knn) if sharded or cfg.model.knn != "exact" else None
        static = StaticGraphs.from_dataset(ds, cfg.model, search)
    if cfg.model.use_kg and static.kg is None:
        log.info(f"dataset {ds.name} has no knowledge graph: the KG view is off")
    if cfg.model.use_mm and static.mm is None:
        log.info(f"dataset {ds.name} has no modality features: the multimodal view is off")
    features = {m: torch.tensor(np.asarray(f, dtype=np.float32)) for m, f in ds.features.items()} if static.mm else {}
    kg_shape = (static.kg.num_nodes - ds.num_items, static.kg.num_relations) if static.kg is not None else None
    torch.manual_seed(SeedStreams.of(cfg.train.seed).init)
    return SLIFMR(cfg.model, ds.num_users, ds.num_items, features, kg_shape, sparse_tables), static


def _atomic_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


def _checkpoint_meta(cfg: Config, ds: Dataset, epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "config": cfg.to_dict(), "dataset": ds.fingerprint(), "slifmr_version": __version__}


def _format_line(epochs: int, rec: EpochRecord, stop_metric: str) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in rec.loss.items() if k != "loss")
    k = stop_metric.split("@")[1]
    return (
        f"epoch {rec.epoch:3d}/{epochs} | loss {rec.loss['loss']:.4f} ({losses}) | "
        f"valid recall@{k} {rec.valid[f'recall@{k}']:.4f} ndcg@{k} {rec.valid[f'ndcg@{k}']:.4f} | "
        f"{rec.epoch_seconds:.2f}s (fusion {rec.fusion_seconds:.2f}s)"
        + (f" | kNN recall {rec.knn_recall:.3f}" if rec.knn_recall is not None else "")
        + (" *" if rec.is_best else "")
    )


def train_loop(
    cfg: Config,
    run_dir: str | os.PathLike,
    comm: Comm | None = None,
    resume: bool = False,
    ds: Dataset | None = None,
    reporter: Reporter | None = None,
    knn_fn: KnnFn | None = None,
    resume_from: Path | None = None,
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train until early stopping or cfg.train.epochs; returns the contents of results.json.

    `resume` continues from run_dir/checkpoint, `resume_from` from another checkpoint folder
    (the one Ray Train hands a restarted worker group). The model trains on `comm.device`.
    `evaluate_test=False` (sweep trials) never touches the test split: results.json then has
    "test": null, and the sweep evaluates only its chosen trial on test, once.

    Each epoch is the method (architecture.md §4): Z(t-1) -> S(t) -> the epoch's graphs ->
    steps -> Z(t) -> validation -> checkpoint."""
    comm = comm or Comm.current()
    run_dir = Path(run_dir)
    set_threads(cfg, comm)
    ds = ds if ds is not None else resolve_dataset(cfg)
    if cfg.variant in CLOSED_FORM:
        return fit_closed_form(cfg, run_dir, ds, comm, reporter, evaluate_test)
    seeds, t = SeedStreams.of(cfg.train.seed), cfg.train
    knn_fn = knn_fn or KnnSearch(comm, cfg.model.knn, seed=seeds.knn)
    sampled = t.sampling != "full"  # sampled steps touch few table rows: sparse grads, row-wise Adam
    model, static = build_model(cfg, ds, comm, sparse_tables=sampled)
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
        t.strategy, model, comm, lr=t.lr, weight_decay=t.weight_decay, zero_stage=t.zero_stage, micro_batch=per_worker,
        row_sparse=model.embedding_tables(), sparse_tables=sampled,
        # full-graph steps give every table row a gradient: auto means dense there
        grad_sync="dense" if t.grad_sync == "auto" and not sampled else t.grad_sync)
    sampler = BPRSampler(users, items, ds.num_items, per_worker, seed=seeds.negatives, rank=comm.rank,
                         world_size=comm.world_size)
    steps = min(len(sampler), t.steps_per_epoch or len(sampler))
    evaluator = Evaluator(ds, t.topk, t.eval_chunk, users=_user_shard(ds, comm, t.eval_users, seeds.eval_users))
    fanouts = sampling_fanouts(t, model.view_layers)
    if sampled and comm.is_main:
        log.info(f"{t.sampling} sampling: backend {backend()}, fan-outs " + (
            f"{t.fanout} per hop" if t.sampling == "neighbor" else f"{t.fanout.split(',')[0]}: one hop per step"))
    spmm = layerwise_spmm(sharding=_row_sharding(comm))
    state = TrainState()
    if resume or resume_from is not None:
        _resume(state, model, strategy, cfg, ds, run_dir, resume_from, comm)
    elif comm.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").write_text("")

    # the tracker's run ends on every exit (FAILED, KILLED on Ctrl-C), so a later run in this
    # process starts its own
    with tracking(cfg, run_dir, resume=resume or resume_from is not None, enabled=comm.is_main) as tracker:
        graphs: EpochGraphs | None = None
        for epoch in range(state.epoch + 1, t.epochs + 1):
            if state.stopper.bad_epochs >= t.patience:
                break
            t0, started = time.perf_counter(), time.time()
            comm.seconds["comm"], comm.traffic["bytes"] = 0.0, 0.0
            generator = seeds.epoch_generator(epoch)
            strategy.set_lr(learning_rate(t, epoch))
            graphs, knn_seconds, ridge_seconds = _epoch_graphs(model, static, cfg, state, epoch, generator, knn_fn, comm,
                                                               graphs)
            fusion_seconds = time.perf_counter() - t0
            # by default sampled where the model is: on a GPU the CPU's sampler took two-thirds of a
            # history step at 10^6 users (RESULTS.md, GPU)
            subgraphs = BatchSubgraphs(epoch_graph(graphs), fanouts, seeds.neighbors, comm.rank,
                                       seed_sources_only=t.sampling == "history" and t.history_grad == "seeds",
                                       device=comm.device if t.sample_device == "model" else "cpu") if sampled else None
            # history: the epoch's historical embeddings, from the layer-wise product over A(t)
            t_memory = time.perf_counter()
            memory = record_memory(model, graphs, spmm) if t.sampling == "history" else None
            memory_seconds = time.perf_counter() - t_memory
            batches = sampler.epoch(epoch)  # the epoch's shuffle and negatives: outside the steps' time
            t_steps = time.perf_counter()
            loss, n_steps, sampling_seconds = _train_steps(
                strategy=strategy, graphs=graphs, batches=batches, subgraphs=subgraphs, memory=memory, epoch=epoch,
                steps=steps, generator=generator, device=comm.device, run_dir=run_dir,
                neighbour_grad=t.history_grad == "sampled", refresh_every=t.history_refresh,
                refresh=functools.partial(record_memory, model, graphs, spmm) if memory is not None else None)
            train_seconds = time.perf_counter() - t_steps
            subgraphs = memory = None  # released before inference and the next epoch's graphs (GBs at 10^6 users)
            graphs = model.attend(graphs)  # KGAT: attention from the epoch's trained weights
            t_eval = time.perf_counter()
            reps = model.representations(graphs, spmm)
            if not reps.finite():  # equal on every rank
                raise NonFiniteError(f"epoch {epoch}: the user or item representations are not finite after the "
                                     f"epoch's steps; {_stopped_hint(run_dir, epoch)}")
            state.last_z, state.epoch = reps.items.clone(), epoch
            state.ridge_weight, valid = choose_blend(evaluator, reps, cfg.model, t.stop_metric, comm.all_reduce_sum)
            rec = EpochRecord(
                epoch=epoch, loss=loss, valid=valid, is_best=state.stopper.step(valid[t.stop_metric], epoch),
                epoch_seconds=time.perf_counter() - t0, fusion_seconds=fusion_seconds, knn_seconds=knn_seconds,
                ridge_seconds=ridge_seconds, ridge_weight=state.ridge_weight, comm_seconds=comm.seconds["comm"],
                train_seconds=train_seconds, sampling_seconds=sampling_seconds, memory_seconds=memory_seconds,
                eval_seconds=time.perf_counter() - t_eval, steps=n_steps,
                grad_bytes_per_step=comm.traffic["bytes"] / max(n_steps, 1), knn_recall=getattr(knn_fn, "recall", None),
                epoch_start_unix_seconds=started, fused=state.corr_epoch == epoch)
            _save_epoch(model, strategy, state, rec, cfg, ds, run_dir, comm)
            if tracker is not None:
                tracker.log_epoch(rec.to_json())
            if reporter is not None:
                reporter(rec.to_json(), run_dir / "checkpoint" if comm.is_main else None)

        comm.barrier()  # rank 0 has written best/ before anyone loads it
        # the best epoch is read back from disk: the training replica, its optimizer state and the
        # last epoch's graphs go first, so the two never share memory (OOM at 10^6 users, 2 workers)
        model = strategy = graphs = reps = None
        results = final_results(cfg, ds, run_dir, evaluator, comm, evaluate_test, static=static)
        if tracker is not None:
            tracker.finish(results)
    return results


def _epoch_graphs(model: SLIFMR, static: StaticGraphs, cfg: Config, state: TrainState, epoch: int,
                  generator: torch.Generator, knn_fn: KnnFn, comm: Comm,
                  previous: EpochGraphs | None) -> tuple[EpochGraphs, float, float]:
    """Epoch `epoch`'s graphs: S(t) from Z(t-1) when a fusion is due, and the ridge head's W(t)
    solved on the same search's neighbours (both kept in `state`), then A(t), A_mm(t), KG(t) and
    its attention. Returns them and the seconds of the kNN search and of the ridge solves."""
    start, m = time.perf_counter(), cfg.model
    sharding = _row_sharding(comm)
    knn_seconds = ridge_seconds = 0.0
    if fusion_due(m, epoch) and state.last_z is not None:
        # one search serves S(t) (the first k_corr neighbours) and the ridge head (ridge_k)
        k = max(m.k_corr, m.ridge_k) if m.ridge_weight > 0 else m.k_corr
        nbrs, sims = knn_fn(state.last_z.detach(), k)
        state.corr = correlation_from_neighbours(nbrs[:, : m.k_corr], sims[:, : m.k_corr], m.corr_binary)
        state.neighbours = nbrs[:, : m.ridge_k].cpu().int() if m.ridge_weight > 0 else None
        state.corr_epoch = epoch
        knn_seconds = time.perf_counter() - start
        if state.neighbours is not None:  # each worker solves its block of items, one all-gather
            state.item_ridge = ridge_weights(static.ui_edges, static.num_users, static.num_items, state.neighbours,
                                             m.ridge_l2, static.item_gram, sharding, comm.device)
            ridge_seconds = time.perf_counter() - start - knn_seconds
    graphs = epoch_graphs(static, state.corr, m, generator, comm.device, previous, state.neighbours, sharding,
                          item_ridge=state.item_ridge)
    state.item_ridge = graphs.item_ridge  # solved by epoch_graphs after a resume
    return (graphs if graphs.kg_attention is not None else model.attend(graphs)), knn_seconds, ridge_seconds


def choose_blend(evaluator: Evaluator, reps: Representations, cfg: ModelConfig, stop_metric: str,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float | None, dict[str, float]]:
    """The ridge head's blend chosen on validation: the validation metrics of the ranking with
    each weight of `cfg.ridge_blend` and `cfg.ridge_weight`, and the weight whose `stop_metric` is highest (the first
    of equals). Returns (that weight, its validation metrics); (None, the metrics of `reps` as
    they are) without the head or a blend grid. Reads the validation split only."""
    if not reps.has_head or reps.ridge_weight <= 0 or not cfg.ridge_blend:
        return None, evaluator.evaluate(reps.full_scores, VALID, all_reduce)
    weights = list(cfg.ridge_blend) + ([reps.ridge_weight] if reps.ridge_weight not in cfg.ridge_blend else [])
    scores = evaluator.evaluate_candidates(lambda users: reps.blends(users, weights), len(weights), VALID, all_reduce)
    best = max(range(len(weights)), key=lambda i: (scores[i][stop_metric], -i))
    return weights[best], scores[best]


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


def sampling_fanouts(t: TrainConfig, view_layers: dict[str, int]) -> dict[EdgeType, list[int]] | None:
    """The sampler's fan-outs of train.sampling: none (full), per hop and edge type (neighbor),
    or one hop per edge type of the active views (history)."""
    if t.sampling == "neighbor":
        return view_fanouts(t.fanout, view_layers)
    if t.sampling == "history":
        return history_fanouts(t.fanout, view_layers)
    return None


def _train_steps(*, strategy: Strategy, graphs: EpochGraphs, batches: Iterator[Triples],
                 subgraphs: BatchSubgraphs | None, memory: dict[HopKey, HopMemory] | None, epoch: int, steps: int,
                 generator: torch.Generator, device: torch.device, run_dir: Path, neighbour_grad: bool = True,
                 refresh: Callable[[], dict[HopKey, HopMemory]] | None = None,
                 refresh_every: int = 0) -> tuple[dict[str, float], int, float]:
    """The epoch's optimisation steps: (mean of each loss part, steps taken, seconds sampling).
    `subgraphs`: sampled steps (two-hop neighbour sampling, or one hop over `memory`, which
    `refresh()` rebuilds every `refresh_every` steps when > 0; that time counts as steps')."""
    totals: dict[str, float] = {}
    n_steps, sampling_seconds = 0, 0.0
    for step, triples in enumerate(log.progress(batches, desc=f"epoch {epoch}", total=steps)):
        if step >= steps:
            break
        if refresh is not None and refresh_every > 0 and step > 0 and step % refresh_every == 0:
            memory = refresh()  # every rank at the same step: the layer-wise product is a collective
        if subgraphs is not None:
            t_sample = time.perf_counter()
            sample = subgraphs.sample(*triples, epoch, step)
            batch = (sampled_batch(sample, graphs, generator, device) if memory is None
                     else history_batch(sample, memory, graphs, generator, device, neighbour_grad))
            sampling_seconds += time.perf_counter() - t_sample
        else:
            batch = TrainingBatch.full(graphs, triples, generator, device)
        parts = strategy.module(batch)  # the model, or its DDP / DeepSpeed wrapper
        if not strategy.step(parts["loss"]):  # a non-finite loss (any rank) or averaged gradient
            # the loss is the sum of the parts: a bad part makes it non-finite, so this names it
            bad = next((k for k, v in parts.items() if not bool(torch.isfinite(v.detach()))), None)
            what = (f"loss part '{bad}' is {float(parts[bad].detach())}" if bad
                    else "the loss on another worker or the averaged gradient is not finite")
            raise NonFiniteError(f"epoch {epoch}, step {step + 1}: {what}; {_stopped_hint(run_dir, epoch)}")
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach())
        n_steps += 1
    return {k: v / max(n_steps, 1) for k, v in totals.items()}, n_steps, sampling_seconds


def _resume(state: TrainState, model: SLIFMR, strategy: Strategy, cfg: Config, ds: Dataset, run_dir: Path,
            resume_from: Path | None, comm: Comm) -> None:
    """Load the checkpoint into model, optimizer and `state`; drop metrics lines written after it."""
    ckpt, meta = load_checkpoint(resume_from or run_dir / "checkpoint")
    check_compatible(meta, cfg, ds, run_dir)
    if comm.is_main:  # changed runtime keys (epochs, threads, ...): the folder says so
        save_config(cfg, run_dir / "config.yaml")
    model.load_state_dict(ckpt["model"])
    strategy.load_state_dict(ckpt["optimizer"])
    state.load_state_dict(ckpt, comm.device)
    metrics_path = run_dir / "metrics.jsonl"
    if comm.is_main and metrics_path.exists():
        lines = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= state.epoch]
        write_text(metrics_path, "".join(ln + "\n" for ln in lines))
    log.info(f"resuming {run_dir} at epoch {state.epoch + 1} (best so far: epoch {state.stopper.best_epoch})")
    if state.stopper.bad_epochs >= cfg.train.patience:
        log.info(f"the run had already stopped early ({state.stopper.bad_epochs} epochs without a better "
                 f"{cfg.train.stop_metric}, patience {cfg.train.patience}): nothing more to train")


def _save_epoch(model: SLIFMR, strategy: Strategy, state: TrainState, rec: EpochRecord, cfg: Config,
                ds: Dataset, run_dir: Path, comm: Comm) -> None:
    """Rank 0 writes best/ (when best), the metrics line and the checkpoint; nothing of the epoch
    is written when a parameter or optimizer state is not finite."""
    optimizer_state = strategy.state_dict()  # a collective under ZeRO: every rank calls it
    # replicas and optimizer states are equal on every rank, so all ranks stop alike
    bad_state = first_nonfinite({"model": model.state_dict(), "optimizer": optimizer_state})
    if bad_state is not None:
        raise NonFiniteError(f"epoch {rec.epoch}: {bad_state} is not finite after the epoch's steps; "
                             f"{_stopped_hint(run_dir, rec.epoch)}")
    if not comm.is_main:
        return
    meta, ckpt = _checkpoint_meta(cfg, ds, rec.epoch), state.state_dict()
    if rec.is_best:
        save_checkpoint(run_dir / "best", {"model": model.state_dict(), "corr": ckpt["corr"],
                                           "neighbours": ckpt["neighbours"], "ridge_weight": ckpt["ridge_weight"]}, meta)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec.to_json()) + "\n")
    save_checkpoint(run_dir / "checkpoint", {"model": model.state_dict(), "optimizer": optimizer_state, **ckpt}, meta)
    log.info(_format_line(cfg.train.epochs, rec, cfg.train.stop_metric))


def _stopped_hint(run_dir: Path, epoch: int) -> str:
    """What the one-line non-finite error says about the run folder: nothing of this epoch
    was saved, the last good checkpoint is kept."""
    if epoch <= 1 or not (run_dir / "checkpoint").exists():
        return f"training stopped; no checkpoint was written (lower train.lr or check the features of {run_dir})"
    return (f"training stopped; the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir}: continue with "
            f"`slifmr train --resume {run_dir}` once the cause is fixed, or start a new run with a smaller train.lr")


def _user_shard(ds: Dataset, comm: Comm, eval_users: int = 0, seed: int = 0) -> torch.Tensor:
    """This rank's block of the evaluated users: all, or `eval_users` of them drawn by `seed`."""
    users = torch.arange(ds.num_users)
    if 0 < eval_users < ds.num_users:
        gen = torch.Generator().manual_seed(seed)
        users = torch.sort(torch.randperm(ds.num_users, generator=gen)[:eval_users]).values
    start, stop = comm.shard(users.numel())
    return users[start:stop]


def _row_sharding(comm: Comm) -> RowSharding | None:
    return (comm.shard, comm.all_gather_rows) if comm.world_size > 1 else None


def build_closed_form(cfg: Config, ds: Dataset) -> EASE | CoocRidge | Popularity:
    """The model of a closed-form variant (config.CLOSED_FORM), not yet solved."""
    if cfg.variant == "pop":
        return Popularity(ds)
    return EASE(ds) if cfg.variant == "ease" else CoocRidge(ds, cfg.model.ridge_k)


def fit_closed_form(cfg: Config, run_dir: Path, ds: Dataset, comm: Comm, reporter: Reporter | None = None,
                    evaluate_test: bool = True) -> dict[str, Any]:
    """A closed-form variant (ease, cooc_ridge, pop): solve it for every ridge weight of
    model.ease_l2 (one metrics.jsonl line each, as if an epoch), keep the best by validation,
    then the run folder as train_loop's."""
    if comm.world_size > 1:
        raise SlifmrError(f"variant {cfg.variant} is a closed form solved in one process: run it with --workers 0")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    evaluator = Evaluator(ds, cfg.train.topk, cfg.train.eval_chunk,
                          users=_user_shard(ds, comm, cfg.train.eval_users, SeedStreams.of(cfg.train.seed).eval_users))
    with tracking(cfg, run_dir, enabled=comm.is_main) as tracker:
        model = build_closed_form(cfg, ds)
        stopper = EarlyStopping()
        grid = [None] if cfg.variant == "pop" else cfg.model.ease_l2  # pop has no ridge weight to choose
        for step, l2 in enumerate(grid, start=1):
            t0, started = time.perf_counter(), time.time()
            model.fit(l2)
            if not model.finite():
                raise NonFiniteError(f"{cfg.variant} with model.ease_l2 {l2}: the solved weights are not finite")
            valid = evaluator.evaluate(model.full_scores, VALID)
            rec = EpochRecord(epoch=step, l2=l2, loss={"loss": 0.0}, valid=valid,
                              is_best=stopper.step(valid[cfg.train.stop_metric], step),
                              epoch_seconds=time.perf_counter() - t0, epoch_start_unix_seconds=started)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec.to_json()) + "\n")
            if rec.is_best:
                save_checkpoint(run_dir / "best", {"model": model.state_dict()}, _checkpoint_meta(cfg, ds, step))
            log.info(f"{cfg.variant}" + (f" l2 {l2:g}" if l2 is not None else "") + f" | valid {cfg.train.stop_metric} "
                     f"{valid[cfg.train.stop_metric]:.4f}" + (" *" if rec.is_best else ""))
            if tracker is not None:
                tracker.log_epoch(rec.to_json())
            if reporter is not None:
                reporter(rec.to_json(), run_dir / "best")
        shutil.copytree(run_dir / "best", run_dir / "checkpoint", dirs_exist_ok=True)  # marks the folder as a run
        results = final_results(cfg, ds, run_dir, evaluator, comm, evaluate_test)
        if tracker is not None:
            tracker.finish(results)
    return results


def load_best(cfg: Config, ds: Dataset, run_dir: Path, device: torch.device | str = "cpu",
              comm: Comm | None = None, static: StaticGraphs | None = None) -> tuple[Scorer, dict[str, Any]]:
    """What the best validation epoch ranks with, on `device`: its representations over that
    epoch's graphs (the layer-wise inference split over `comm`'s workers, who must then all call
    this together), or the EASE weights. Returns it and the checkpoint's meta."""
    ckpt, meta = load_checkpoint(run_dir / "best")
    check_compatible(meta, cfg, ds, run_dir)
    if cfg.variant in CLOSED_FORM:
        solved = build_closed_form(cfg, ds).to(device)
        solved.load_state_dict(ckpt["model"])
        return solved, meta
    model, static = build_model(cfg, ds, comm=comm, static=static)
    model.to(device)
    model.load_state_dict(ckpt["model"])
    corr = None if ckpt.get("corr") is None else (ckpt["corr"]["edge_index"], ckpt["corr"]["weight"])
    epoch = int(meta["epoch"])
    sharding = _row_sharding(comm or Comm())
    graphs = epoch_graphs(static, corr, cfg.model, SeedStreams.of(cfg.train.seed).epoch_generator(epoch), device,
                          neighbours=ckpt.get("neighbours"), sharding=sharding)
    reps = model.representations(model.attend(graphs), layerwise_spmm(sharding=sharding))
    if ckpt.get("ridge_weight") is not None:  # the blend validation chose at that epoch
        reps = replace(reps, ridge_weight=float(ckpt["ridge_weight"]))
    return reps, meta


def final_results(cfg: Config, ds: Dataset, run_dir: Path, evaluator: Evaluator, comm: Comm,
                  evaluate_test: bool = True, static: StaticGraphs | None = None) -> dict[str, Any]:
    """Test metrics, read once, at the best validation epoch (`static`: the run's static
    graphs, reused)."""
    model, meta = load_best(cfg, ds, run_dir, comm.device, comm, static)
    if comm.is_main and isinstance(model, Representations):  # what `recommend` and co. load (ranking.py)
        save_ranking(run_dir, model, meta)
    valid = evaluator.evaluate(model.full_scores, VALID, comm.all_reduce_sum)
    test = evaluator.evaluate(model.full_scores, TEST, comm.all_reduce_sum) if evaluate_test else None
    records = read_run(run_dir)["records"]
    results = {
        "variant": cfg.variant,
        "seed": cfg.train.seed,
        "dataset": ds.name,
        "best_epoch": int(meta["epoch"]),
        "epochs_run": len(records),
        "eval_users": cfg.train.eval_users,  # 0: valid and test over every user, else over this seeded sample
        "valid": valid,
        "test": test,
        "seconds_per_epoch": sum(r["epoch_seconds"] for r in records) / max(len(records), 1),
        "fusion_seconds_per_epoch": sum(r["fusion_seconds"] for r in records) / max(len(records), 1),
    }
    if comm.is_main:
        _atomic_json(run_dir / "results.json", results)
        k = cfg.train.stop_metric.split("@")[1]
        line = f"best epoch {results['best_epoch']}: valid recall@{k} {valid[f'recall@{k}']:.4f}"
        if test is not None:
            line += f" | test recall@{k} {test[f'recall@{k}']:.4f} ndcg@{k} {test[f'ndcg@{k}']:.4f}"
        log.info(line)
    return results
