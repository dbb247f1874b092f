"""The one training loop. The in-process path (`--workers 0`) and every Ray Train worker run
`train_loop`; distribution reaches it only through `Comm` (rank, world size, collectives).

Run folder:
    config.yaml          the resolved configuration
    metrics.jsonl        one line per epoch: losses, validation metrics, timings
    checkpoint/          latest: model, optimizer, epoch, early stopping, RNG, last Z, S(t)
    best/                the model at the best validation epoch
    results.json         best epoch, its validation metrics, the test metrics (read once)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slifmr import __version__, log
from slifmr.atomic import write_text
from slifmr.config import RUNTIME_KEYS, Config, from_dict, save_config
from slifmr.data.format import TEST, VALID, Dataset, read_dataset
from slifmr.data.graphs import training_pairs
from slifmr.distributed.checkpoint import first_nonfinite, load_checkpoint, save_checkpoint
from slifmr.distributed.collectives import Comm
from slifmr.distributed.knn import KnnSearch
from slifmr.distributed.strategy import make_strategy
from slifmr.errors import NonFiniteError, SlifmrError
from slifmr.evaluation import Evaluator
from slifmr.model.ease import EASE, ease_weights, gram
from slifmr.model.slifmr import SLIFMR
from slifmr.report import read_run
from slifmr.sampling.negative import BPRSampler
from slifmr.sampling.neighbor import BatchSubgraphs, backend, view_fanouts

Reporter = Callable[[dict[str, Any], Path | None], None]  # (epoch metrics, checkpoint folder)


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


def set_threads(cfg: Config, comm: Comm) -> None:
    """Each process gets the threads of the cores it owns: oversubscription costs 10x here."""
    n = cfg.train.threads or max(1, (os.cpu_count() or 1) // max(comm.world_size, 1))
    torch.set_num_threads(n)


def resolve_dataset(cfg: Config) -> Dataset:
    if cfg.data is None:
        from slifmr.data.ml100k import prepare_ml100k

        return read_dataset(prepare_ml100k())
    return read_dataset(cfg.data)


def build_model(cfg: Config, ds: Dataset, knn_fn: Any = None, comm: Comm | None = None) -> SLIFMR:
    """The model; its one-time multimodal kNN graph uses model.knn (exact: sharded over
    `comm`'s workers; approx: faiss, reproducible, for large catalogues)."""
    torch.manual_seed(cfg.train.seed)
    sharded = comm is not None and comm.world_size > 1
    static = KnnSearch(comm, cfg.model.knn) if sharded or cfg.model.knn != "exact" else None
    return SLIFMR(ds, cfg.model, knn_fn=knn_fn, seed=cfg.train.seed, static_knn_fn=static)


def _atomic_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


def _checkpoint_meta(cfg: Config, ds: Dataset, epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "config": cfg.to_dict(), "dataset": ds.fingerprint(), "slifmr_version": __version__}


def check_compatible(meta: dict[str, Any], cfg: Config, ds: Dataset, where: Path) -> None:
    """Refuse to resume, evaluate or serve a checkpoint made for another dataset or config."""
    saved, mine = meta.get("dataset", {}), ds.fingerprint()
    if "digest" not in saved:  # checkpoints written before the digest existed
        log.warning(f"checkpoint in {where} predates dataset digests: only the counts of {ds.name} are checked")
        mine = {k: v for k, v in mine.items() if k != "digest"}
    if saved != mine:
        what = "its id maps or split differ" if {k: v for k, v in saved.items() if k != "digest"} == {
            k: v for k, v in mine.items() if k != "digest"} else "its counts differ"
        raise SlifmrError(f"dataset {cfg.data or ds.name} changed since {where} was trained ({what}): "
                          "retrain, or restore the dataset it was trained on")
    saved = from_dict(meta.get("config", {}))
    mine, theirs = cfg.to_dict(), saved.to_dict()
    for key in RUNTIME_KEYS:  # how long and on how many threads, not what is trained
        section, name = key.split(".")
        mine[section].pop(name)
        theirs[section].pop(name)
    if mine != theirs:
        diff = sorted(
            f"{s}.{k}" for s in ("model", "train") for k in mine[s] if mine[s][k] != theirs[s].get(k)
        ) + (["variant"] if mine["variant"] != theirs["variant"] else [])
        raise SlifmrError(f"checkpoint in {where} was made with a different config (differs in: {', '.join(diff) or 'data'})")


def _format_line(epoch: int, epochs: int, rec: dict[str, Any], stop_metric: str) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in rec["loss"].items() if k != "loss")
    valid = rec["valid"]
    k = stop_metric.split("@")[1]
    return (
        f"epoch {epoch:3d}/{epochs} | loss {rec['loss']['loss']:.4f} ({losses}) | "
        f"valid recall@{k} {valid[f'recall@{k}']:.4f} ndcg@{k} {valid[f'ndcg@{k}']:.4f} | "
        f"{rec['epoch_seconds']:.2f}s (fusion {rec['fusion_seconds']:.2f}s)"
        + (f" | kNN recall {rec['knn_recall']:.3f}" if rec.get("knn_recall") is not None else "")
        + (" *" if rec["is_best"] else "")
    )


def train_loop(
    cfg: Config,
    run_dir: str | os.PathLike,
    comm: Comm | None = None,
    resume: bool = False,
    ds: Dataset | None = None,
    reporter: Reporter | None = None,
    knn_fn: Any = None,
    resume_from: Path | None = None,
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train until early stopping or cfg.train.epochs; returns the contents of results.json.

    `resume` continues from run_dir/checkpoint, `resume_from` from another checkpoint folder
    (the one Ray Train hands a restarted worker group). The model trains on `comm.device`.
    `evaluate_test=False` (sweep trials) never touches the test split: results.json then has
    "test": null, and the sweep evaluates only its chosen trial on test, once."""
    comm = comm or Comm.current()
    run_dir = Path(run_dir)
    set_threads(cfg, comm)
    ds = ds if ds is not None else resolve_dataset(cfg)
    if cfg.variant == "ease":
        return fit_ease(cfg, run_dir, ds, comm, reporter, evaluate_test)
    knn_fn = knn_fn or KnnSearch(comm, cfg.model.knn, seed=cfg.train.seed)
    model = build_model(cfg, ds, knn_fn, comm).to(comm.device)
    model.row_sharding = _row_sharding(comm)
    comm.broadcast_parameters(model.parameters())
    users, items = training_pairs(ds)
    if users.numel() < comm.world_size:  # every worker needs a shard: refuse before any work
        raise SlifmrError(f"{comm.world_size} workers but dataset {ds.name} has {users.numel()} training "
                          f"interaction(s): use --workers {max(users.numel(), 1)} or fewer")
    # train.batch_size is the global batch: each of the world_size workers takes its share, so
    # N workers take the same optimisation steps as one
    per_worker = max(1, cfg.train.batch_size // comm.world_size)
    neighbor = cfg.train.sampling == "neighbor"
    # full-graph steps give every table row a gradient: auto means dense there
    grad_sync = "dense" if cfg.train.grad_sync == "auto" and not neighbor else cfg.train.grad_sync
    model.sparse_tables = neighbor  # sampled steps touch few table rows: sparse grads, row-wise Adam
    strategy = make_strategy(cfg.train.strategy, model, cfg.train.lr, cfg.train.weight_decay, comm,
                              cfg.train.zero_stage, per_worker, model.embedding_tables(), grad_sync, neighbor)
    sampler = BPRSampler(users, items, ds.num_items, per_worker, cfg.train.seed + 1, comm.rank, comm.world_size)
    steps = min(len(sampler), cfg.train.steps_per_epoch or len(sampler))
    evaluator = Evaluator(ds, cfg.train.topk, cfg.train.eval_chunk, users=_user_shard(ds, comm, cfg.train.eval_users, cfg.train.seed))
    fanouts = view_fanouts(cfg.train.fanout, model.view_layers) if neighbor else None
    if neighbor and comm.is_main:
        log.info(f"neighbor sampling: backend {backend()}, fan-outs {cfg.train.fanout} per hop")
    stopper = EarlyStopping()
    start_epoch, last_z = 1, None
    ckpt_dir, best_dir = run_dir / "checkpoint", run_dir / "best"
    metrics_path = run_dir / "metrics.jsonl"

    if resume or resume_from is not None:
        state, meta = load_checkpoint(resume_from or ckpt_dir)
        check_compatible(meta, cfg, ds, run_dir)
        if comm.is_main:  # changed runtime keys (epochs, threads, ...): the folder says so
            save_config(cfg, run_dir / "config.yaml")
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["optimizer"])
        stopper = EarlyStopping(**state["early_stopping"])
        torch.set_rng_state(state["rng"]["torch"])
        last_z = state["last_z"].to(comm.device)
        if state.get("corr") is not None:
            model.corr = (state["corr"]["edge_index"], state["corr"]["weight"])
        start_epoch = int(state["epoch"]) + 1
        if comm.is_main and metrics_path.exists():  # drop lines written after the checkpoint
            lines = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] < start_epoch]
            write_text(metrics_path, "".join(ln + "\n" for ln in lines))
        log.info(f"resuming {run_dir} at epoch {start_epoch} (best so far: epoch {stopper.best_epoch})")
        if stopper.bad_epochs >= cfg.train.patience:
            log.info(f"the run had already stopped early ({stopper.bad_epochs} epochs without a better "
                     f"{cfg.train.stop_metric}, patience {cfg.train.patience}): nothing more to train")
    elif comm.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        metrics_path.write_text("")

    stop_metric = cfg.train.stop_metric
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        if stopper.bad_epochs >= cfg.train.patience:
            break
        t0, started = time.perf_counter(), time.time()
        comm.seconds["comm"], comm.traffic["bytes"] = 0.0, 0.0
        model.train()
        model.pre_epoch(epoch, last_z)
        subgraphs = BatchSubgraphs(model.epoch_graph(), fanouts, cfg.train.seed + 2, comm.rank) if neighbor else None
        totals: dict[str, float] = {}
        n_batches, sampling_seconds, t_steps = 0, 0.0, time.perf_counter()
        for step, batch in enumerate(log.progress(sampler.epoch(epoch), desc=f"epoch {epoch}", total=steps)):
            if step >= steps:
                break
            if subgraphs is not None:
                t_sample = time.perf_counter()
                subgraph = subgraphs.sample(*batch, epoch, step)
                sampling_seconds += time.perf_counter() - t_sample
                parts = model.sampled_loss(subgraph)
            else:
                parts = model.loss(batch)
            if not strategy.step(parts["loss"]):  # a non-finite loss (any rank) or averaged gradient
                # the loss is the sum of the parts: a bad part makes it non-finite, so this names it
                bad = next((k for k, v in parts.items() if not bool(torch.isfinite(v.detach()))), None)
                what = (f"loss part '{bad}' is {float(parts[bad].detach())}" if bad
                        else "the loss on another worker or the averaged gradient is not finite")
                raise NonFiniteError(f"epoch {epoch}, step {step + 1}: {what}; {_stopped_hint(run_dir, epoch)}")
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            n_batches += 1
        train_seconds = time.perf_counter() - t_steps
        model.end_epoch()
        model.eval()
        t_eval = time.perf_counter()
        last_z = model.item_representations().clone()
        if not all(bool(torch.isfinite(r).all()) for r in model.representations()):  # equal on every rank
            raise NonFiniteError(f"epoch {epoch}: the user or item representations are not finite after the "
                                 f"epoch's steps; {_stopped_hint(run_dir, epoch)}")
        valid = evaluator.evaluate(model.full_scores, VALID, comm.all_reduce_sum)
        is_best = stopper.step(valid[stop_metric], epoch)
        rec = {
            "epoch": epoch,
            "loss": {k: v / max(n_batches, 1) for k, v in totals.items()},
            "valid": valid,
            "is_best": is_best,
            "epoch_seconds": time.perf_counter() - t0,
            "fusion_seconds": model.timings["fusion_seconds"],
            "knn_seconds": model.timings["knn_seconds"],
            "comm_seconds": comm.seconds["comm"],
            "train_seconds": train_seconds,  # the steps alone: sampling, forward, backward, sync
            "sampling_seconds": sampling_seconds,
            "eval_seconds": time.perf_counter() - t_eval,
            "steps": n_batches,
            "grad_bytes_per_step": comm.traffic["bytes"] / max(n_batches, 1),
            "knn_recall": getattr(knn_fn, "recall", None),
            "epoch_start_unix_seconds": started,  # gaps between epochs = time outside the loop
            "fused": model.corr_epoch == epoch,
        }
        optimizer_state = strategy.state_dict()  # a collective under ZeRO: every rank calls it
        # replicas and optimizer states are equal on every rank, so all ranks stop alike,
        # before best/, metrics.jsonl or the checkpoint get anything of this epoch
        bad_state = first_nonfinite({"model": model.state_dict(), "optimizer": optimizer_state})
        if bad_state is not None:
            raise NonFiniteError(f"epoch {epoch}: {bad_state} is not finite after the epoch's steps; "
                                 f"{_stopped_hint(run_dir, epoch)}")
        if comm.is_main:
            if is_best:
                save_checkpoint(best_dir, {"model": model.state_dict(), "corr": _corr_state(model)},
                                _checkpoint_meta(cfg, ds, epoch))
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer_state,
                "epoch": epoch,
                "early_stopping": vars(stopper).copy(),
                "rng": {"torch": torch.get_rng_state()},  # sampler and model reseed per epoch
                "last_z": last_z,
                "corr": _corr_state(model),
            }
            save_checkpoint(ckpt_dir, state, _checkpoint_meta(cfg, ds, epoch))
            log.info(_format_line(epoch, cfg.train.epochs, rec, stop_metric))
        if reporter is not None:
            reporter(rec, ckpt_dir if comm.is_main else None)

    comm.barrier()  # rank 0 has written best/ before anyone loads it
    return final_results(cfg, ds, run_dir, evaluator, comm, evaluate_test)


def _stopped_hint(run_dir: Path, epoch: int) -> str:
    """What the one-line non-finite error says about the run folder: nothing of this epoch
    was saved, the last good checkpoint is kept."""
    if epoch <= 1 or not (run_dir / "checkpoint").exists():
        return f"training stopped; no checkpoint was written (lower train.lr or check the features of {run_dir})"
    return (f"training stopped; the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir}: continue with "
            f"`slifmr train --resume {run_dir}` once the cause is fixed, or start a new run with a smaller train.lr")


def _corr_state(model: SLIFMR) -> dict[str, torch.Tensor] | None:
    if model.corr is None:
        return None
    return {"edge_index": model.corr[0], "weight": model.corr[1]}


def _user_shard(ds: Dataset, comm: Comm, eval_users: int = 0, seed: int = 0) -> torch.Tensor:
    """This rank's block of the evaluated users: all, or `eval_users` of them drawn by `seed`."""
    users = torch.arange(ds.num_users)
    if 0 < eval_users < ds.num_users:
        gen = torch.Generator().manual_seed(seed)
        users = torch.sort(torch.randperm(ds.num_users, generator=gen)[:eval_users]).values
    start, stop = comm.shard(users.numel())
    return users[start:stop]


def _row_sharding(comm: Comm) -> Any:
    return (comm.shard, comm.all_gather_rows) if comm.world_size > 1 else None


def fit_ease(cfg: Config, run_dir: Path, ds: Dataset, comm: Comm, reporter: Reporter | None = None,
             evaluate_test: bool = True) -> dict[str, Any]:
    """Variant ease: solve EASE for every ridge weight of model.ease_l2 (one metrics.jsonl line
    each, as if an epoch), keep the best by validation, then the run folder as train_loop's."""
    if comm.world_size > 1:
        raise SlifmrError("variant ease is a closed form solved in one process: run it with --workers 0")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    evaluator = Evaluator(ds, cfg.train.topk, cfg.train.eval_chunk)
    model, g = EASE(ds), gram(ds)
    stopper = EarlyStopping()
    for step, l2 in enumerate(cfg.model.ease_l2, start=1):
        t0, started = time.perf_counter(), time.time()
        model.weights.copy_(ease_weights(g, l2))
        if not bool(torch.isfinite(model.weights).all()):
            raise NonFiniteError(f"ease with model.ease_l2 {l2}: the solved weights are not finite")
        valid = evaluator.evaluate(model.full_scores, VALID)
        rec = {"epoch": step, "l2": l2, "loss": {"loss": 0.0}, "valid": valid,
               "is_best": stopper.step(valid[cfg.train.stop_metric], step),
               "epoch_seconds": time.perf_counter() - t0, "fusion_seconds": 0.0, "epoch_start_unix_seconds": started}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if rec["is_best"]:
            save_checkpoint(run_dir / "best", {"model": model.state_dict()}, _checkpoint_meta(cfg, ds, step))
        log.info(f"ease l2 {l2:g} | valid {cfg.train.stop_metric} {valid[cfg.train.stop_metric]:.4f}"
                 + (" *" if rec["is_best"] else ""))
        if reporter is not None:
            reporter(rec, run_dir / "best")
    shutil.copytree(run_dir / "best", run_dir / "checkpoint", dirs_exist_ok=True)  # marks the folder as a run
    return final_results(cfg, ds, run_dir, evaluator, comm, evaluate_test)


def load_best(cfg: Config, ds: Dataset, run_dir: Path, device: torch.device | str = "cpu",
              comm: Comm | None = None) -> tuple[SLIFMR | EASE, dict[str, Any]]:
    """The model of the best validation epoch, on `device`, ready for scoring (its layer-wise
    inference split over `comm`'s workers, who must then all score together)."""
    state, meta = load_checkpoint(run_dir / "best")
    check_compatible(meta, cfg, ds, run_dir)
    if cfg.variant == "ease":
        model = EASE(ds).to(device)
        model.load_state_dict(state["model"])
        return model, meta
    model = build_model(cfg, ds, comm=comm).to(device)
    model.row_sharding = _row_sharding(comm or Comm())
    model.load_state_dict(state["model"])
    if state.get("corr") is not None:
        model.corr = (state["corr"]["edge_index"], state["corr"]["weight"])
    model.pre_epoch(int(meta["epoch"]), None)  # the best epoch's graphs, S(t) restored above
    model.end_epoch()
    model.eval()
    return model, meta


def final_results(cfg: Config, ds: Dataset, run_dir: Path, evaluator: Evaluator, comm: Comm,
                  evaluate_test: bool = True) -> dict[str, Any]:
    """Test metrics, read once, at the best validation epoch."""
    model, meta = load_best(cfg, ds, run_dir, comm.device, comm)
    valid = evaluator.evaluate(model.full_scores, VALID, comm.all_reduce_sum)
    test = evaluator.evaluate(model.full_scores, TEST, comm.all_reduce_sum) if evaluate_test else None
    records = read_run(run_dir)["records"]
    results = {
        "variant": cfg.variant,
        "seed": cfg.train.seed,
        "dataset": ds.name,
        "best_epoch": int(meta["epoch"]),
        "epochs_run": len(records),
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
