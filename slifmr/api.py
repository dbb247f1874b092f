"""The Python API: train, load a run, evaluate it and recommend from it in a
notebook, through the same functions the `slifmr` command calls.

    import slifmr
    run = slifmr.train(variant="slifmr", epochs=5, k_corr=20)   # the embedded ml-100k
    run.results["test"]["recall@20"]
    run.recommend(["196", "186"], k=10)                        # a pyarrow Table, raw ids
    slifmr.load_run("runs/slifmr").evaluate("valid")
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slifmr import log
from slifmr.arguments import check_int, id_list
from slifmr.config import Config, ModelConfig, TrainConfig, load_config
from slifmr.errors import ConfigError, SlifmrError
from slifmr.run_layout import RunLayout

if TYPE_CHECKING:
    import pyarrow as pa

_SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def config_key(name: str) -> str:
    """A keyword argument's config key: 'model.k_corr' or 'model__k_corr' as given, or a bare
    field name ('k_corr', 'lr') when exactly one section has it. Raises ConfigError otherwise."""
    if "." in name or "__" in name:
        return name.replace("__", ".")
    owners = [s for s, cls in _SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) != 1:
        why = "is in both model and train" if owners else "is not a config key"
        raise ConfigError(f"{name} {why}: pass it as model__{name} or train__{name}" if owners
                          else f"{name} {why} (see slifmr/config.py: ModelConfig, TrainConfig)")
    return f"{owners[0]}.{name}"


@dataclass
class Run:
    """A run folder: its config, and lazily its dataset, best model and results."""

    path: Path
    config: Config

    @cached_property
    def dataset(self) -> Any:
        """The run's `slifmr.data.format.Dataset` (its fingerprint is checked against the model)."""
        from slifmr.ranking import resolve_dataset

        return resolve_dataset(self.config)

    @cached_property
    def _best(self) -> tuple[Any, dict[str, Any]]:
        from slifmr.ranking import load_ranking
        from slifmr.training.cold_placement import placed

        saved = load_ranking(self.path, self.config, self.dataset)  # saved at the end of training
        if saved is None:
            from slifmr.training import (
                load_best,  # rebuilt from best/: the epoch's graphs, propagation
            )

            saved = load_best(self.config, self.dataset, self.path)
        results = RunLayout(self.path).results
        # the held-out items' placement the run chose at its end, applied as its test metrics saw it
        record = json.loads(results.read_text()).get("cold_placement") if results.exists() else None
        return placed(saved[0], self.dataset, record), saved[1]

    @property
    def model(self) -> Any:
        """The best epoch's scorer: `full_scores(users (B,)) -> (B, N)` (slifmr.evaluation.Scorer)."""
        return self._best[0]

    @property
    def best_epoch(self) -> int:
        return int(self._best[1]["epoch"])

    @property
    def results(self) -> dict[str, Any]:
        """results.json: best epoch, its validation metrics and the test metrics (read once, at the end)."""
        path = RunLayout(self.path).results
        if not path.exists():
            raise SlifmrError(f"{self.path} has no results.json (the run has not finished)")
        return json.loads(path.read_text())

    @property
    def history(self) -> list[dict[str, Any]]:
        """metrics.jsonl: one dict per epoch (losses, validation metrics, timings)."""
        path = RunLayout(self.path).metrics
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def evaluate(self, split: str = "test", k: int | Sequence[int] | None = None) -> dict[str, float]:
        """Full-ranking metrics of the best model on "valid" or "test" over every user
        (architecture.md §3): {"recall@20": ..., "ndcg@20": ..., "mrr@20": ..., "coverage@20": ...}
        at each K of `k` (an int or a list; default: the run's train.topk). Raises SlifmrError
        for another split or a K that is not a positive integer."""
        from slifmr.data.format import TEST, VALID
        from slifmr.evaluation import Evaluator, cutoffs

        if split not in ("valid", "test"):
            raise SlifmrError(f"split must be 'valid' or 'test', got {split!r}")
        ks = cutoffs(k) if k is not None else self.config.train.topk
        ev = Evaluator(self.dataset, ks, self.config.train.eval_chunk)
        return ev.evaluate(self.model.full_scores, VALID if split == "valid" else TEST)

    def recommend(self, users: Sequence[str] | str, k: int = 10, history: Sequence[str] | str | None = None,
                  allow: Sequence[str] | str | None = None, exclude_seen: bool = True) -> pa.Table:
        """Top-k unseen items of each user (raw ids, as in the source data, each taken whole: a
        single string is one id, commas included): a Table of user, rank (1-based), item, score.

        The export's serving options, with the same lists (answered by the run's export,
        `Run.scorer`): `history`, raw item ids of interactions since training (a user unknown to
        the run is folded in from them); `allow`, recommend only from these items;
        `exclude_seen=False` keeps the user's known items. Raises SlifmrError for an unknown user
        (without `history`), an unknown item id, or k <= 0."""
        import pyarrow as pa

        from slifmr.recommend import (
            RECOMMENDATION_SCHEMA,
            recommend,
            recommendation_table,
            resolve_users,
        )

        k = check_int("k", k)
        asked = id_list("users", users)
        if history is None and allow is None and exclude_seen:
            ids = resolve_users(self.dataset, asked)
            return recommendation_table(self.dataset, recommend(self.model, self.dataset, ids, k))
        if not isinstance(exclude_seen, bool):
            raise SlifmrError(f"exclude_seen must be True or False, got {exclude_seen!r}")
        given, allowed = id_list("history", history or []), None if allow is None else id_list("allow", allow)
        if not given:
            resolve_users(self.dataset, asked)  # a user the run does not know needs a history
        rows: dict[str, list] = {"user": [], "rank": [], "item": [], "score": []}
        for user in dict.fromkeys(asked):
            try:
                items = self.scorer.recommend(user, k, history=given, allow=allowed, exclude_seen=exclude_seen)
            except ValueError as e:
                raise SlifmrError(str(e)) from None
            for rank, (item, score) in enumerate(items, start=1):
                rows["user"].append(user), rows["rank"].append(rank), rows["item"].append(item), rows["score"].append(score)
        return pa.table(rows).cast(RECOMMENDATION_SCHEMA)

    @cached_property
    def scorer(self) -> Any:
        """The run's export (slifmr/scorer.py's Scorer), written once to a temporary folder that
        is removed when this process exits: what `recommend` with serving options answers from."""
        import atexit
        import shutil
        import tempfile

        from slifmr.scorer import Scorer

        folder = Path(tempfile.mkdtemp(prefix="slifmr-run-export-"))
        atexit.register(shutil.rmtree, folder, True)
        return Scorer.load(self.export(folder / "export"))

    def export(self, out: str | Path, k: int = 20) -> Path:
        """Embeddings as Parquet with raw ids, a faiss index (its recall@k measured), the ridge
        head and a manifest, for serving (slifmr/export.py); `slifmr.export.load_export` reads it."""
        from slifmr.export import export_run

        return export_run(self, out, check_int("k", k))

    def recommend_all(self, out: str | Path, k: int = 10, split: str | None = None) -> tuple[Path, int]:
        """Every user's top-k as Parquet at `out` (atomic); returns (the file, users given fewer
        than k). Lists leave out every item the user has in any split; with `split` ("valid" or
        "test") only what that split's evaluation masks, so `slifmr evaluate-recs` scores them
        as the run's own metrics."""
        from slifmr.recommend import write_recommendations

        return write_recommendations(self.model, self.dataset, check_int("k", k), Path(out), for_split=split)

    def recommend_all_ray(self, out: str | Path, k: int = 10, workers: int = 1, gpu: bool = False,
                          address: str | None = None) -> tuple[str, int]:
        """`recommend_all` on Ray Data (slifmr/inference.py): the run is exported to a temporary
        folder (beside a local `out`, which actors on other nodes then read from the same shared
        storage; in the local temporary folder for a URI), scored by up to `workers` actors (one
        GPU each with `gpu`; no more actors than batches) that write a folder of Parquet parts at
        `out`, and the export removed. Returns (`out`, the actors that wrote parts). Raises
        SlifmrError when `out` exists or workers < 1."""
        import tempfile

        from slifmr.inference import recommend_all_ray

        k, workers = check_int("k", k), check_int("workers", workers)
        beside = None
        if "://" not in str(out):
            if Path(out).exists():
                raise SlifmrError(f"{out} already exists (choose another --out or remove it)")
            beside = Path(out).parent
            beside.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=beside, prefix=f".{Path(str(out)).name}.export-") as tmp:
            return recommend_all_ray(self.export(Path(tmp) / "export"), out, k, workers, gpu, address)


def load_run(path: str | Path) -> Run:
    """A finished or checkpointed run folder. Raises SlifmrError when it is not one."""
    from slifmr.config import read_config_file, saved_config

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise SlifmrError(f"run folder {run_dir} does not exist")
    config = RunLayout(run_dir).config
    if not config.exists():
        raise SlifmrError(f"{run_dir} is not a run folder (no {config.name})")
    return Run(run_dir, saved_config(read_config_file(config), str(config)))


def refuse_existing_run(run_dir: Path) -> None:
    """A new run never writes into a folder that holds one."""
    from slifmr.distributed.checkpoint import exists as checkpoint_exists

    if checkpoint_exists(RunLayout(run_dir).checkpoint):
        raise SlifmrError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out")


def check_extras(cfg: Config) -> None:
    """Raises SlifmrError when `cfg` needs an optional dependency that is not installed."""
    import importlib.util

    if cfg.train.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        from slifmr.distributed.strategy import ZERO_MISSING

        raise SlifmrError(ZERO_MISSING)


def fit(cfg: Config, run_dir: Path, *, resume: bool = False, workers: int = 0, gpu: bool = False,
        max_failures: int = 0, address: str | None = None) -> Run:
    """Train `cfg` in `run_dir` (one writer: the folder is locked): in this process
    (`workers=0`; `gpu`: this machine's CUDA device) or on Ray Train with `workers` workers."""
    from slifmr.runlock import RunLock
    from slifmr.tracking import check_tracker
    from slifmr.training import train_loop

    # a tracker or an extra that is missing fails in one line now, before the run folder is made
    check_tracker(cfg.train.tracker, cfg.train.tracking_uri, run_dir)
    check_extras(cfg)
    comm = None
    if workers == 0 and gpu:
        import torch

        from slifmr.distributed.collectives import Comm

        if not torch.cuda.is_available():
            raise SlifmrError("--gpu: torch sees no CUDA device on this machine")
        comm = Comm.current("cuda")
    with RunLock(run_dir):
        if not resume:  # checked again under the lock: a writer may have finished meanwhile
            refuse_existing_run(run_dir)
        log.info(f"run folder: {run_dir}")
        if workers == 0:
            train_loop(cfg, run_dir, comm, resume=resume)
        else:
            from slifmr.launch import ray_train

            ray_train(cfg, run_dir, workers, gpu, max_failures, address)
    return Run(run_dir, cfg)


def train(data: str | Path | Any | None = None, variant: str = "slifmr", out: str | Path | None = None,
          config: str | Path | None = None, workers: int = 0, preset: str | None = None, **overrides: Any) -> Run:
    """Train a variant on a dataset and return its Run. `data`: a dataset folder (default: the
    embedded ml-100k), or an interactions table in memory (a pandas DataFrame or an Arrow table
    with user_id and item_id columns), imported first into RUN/data as `import_table` does.

    `overrides` set config keys: bare names where unambiguous (epochs=5, k_corr=20, lr=1e-3),
    or model__k_corr / train__lr. `out`: the run folder (default runs/<variant>-seed<seed>-<time>).
    `preset`: a config layer under `config` and `variant` (config.PRESETS, e.g. "scale").
    Raises ConfigError for an unknown key or a bad value, SlifmrError for bad input."""
    from slifmr.config import flatten_config, read_config_file
    from slifmr.options import PYTHON, check_options

    table = _in_memory_table(data, "data")
    settings: list[tuple[str, Any]] = [(config_key(k), v) for k, v in overrides.items()]
    if data is not None and table is None:
        settings.append(("data", str(data)))
    cfg = load_config(config, variant, settings=settings, preset=preset)
    # the command line's rules, spelled as keyword arguments
    check_options(cfg, [k for k, _ in settings], PYTHON, workers=workers,
                  from_file=list(flatten_config(read_config_file(config))) if config else [])
    if cfg.data is not None and not Path(cfg.data).exists():
        raise SlifmrError(f"dataset folder {cfg.data} does not exist")
    run_dir = Path(out) if out else default_run_dir(cfg)
    refuse_existing_run(run_dir)
    if table is not None:
        cfg.data = str(import_table(table, run_dir / "data").resolve())
    return fit(cfg, run_dir, workers=workers)


def _in_memory_table(data: Any, name: str) -> pa.Table | None:
    """`data` as an Arrow table when it is one or a pandas DataFrame; None for a path."""
    import os

    import pyarrow as pa

    if data is None or isinstance(data, (str, os.PathLike)):
        return None
    if isinstance(data, pa.Table):
        return data
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_numpy"):  # pandas (not imported unless given)
        return pa.Table.from_pandas(data, preserve_index=False)
    raise SlifmrError(f"{name} must be a path, a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")


def import_table(interactions: str | Path | Any, out: str | Path, *, user_col: str = "user_id",
                 item_col: str = "item_id", time_col: str | None = None, split: str = "random",
                 split_col: str | None = None, split_seed: int = 2026, name: str | None = None,
                 **options: Any) -> Path:
    """`slifmr data import table` from Python: the interactions (a Parquet or CSV path, a folder
    of them, a pandas DataFrame or an Arrow table) and the options of
    `slifmr.data.table.import_table` (items, item_key, text_columns, features, kg, kg_links,
    cache_dir) imported into the dataset folder `out`, which is returned. Raises DataError
    (file, row, column, value) on bad input, SlifmrError on bad options."""
    import tempfile

    import pyarrow.parquet as pq

    from slifmr.data.format import write_dataset
    from slifmr.data.pipeline import InteractionColumns
    from slifmr.data.table import import_table as import_tables

    columns = InteractionColumns(user_col, item_col, time_col, split_col)
    table = _in_memory_table(interactions, "interactions")
    with tempfile.TemporaryDirectory(prefix="slifmr-import-") as tmp:
        source = str(interactions)
        if table is not None:
            source = str(Path(tmp) / "interactions.parquet")
            pq.write_table(table, source)
            name = name or "table"
        ds = import_tables(source, columns=columns, split=split, split_seed=split_seed, name=name, **options)
        if table is not None:
            ds.provenance["import"]["source"] = f"an in-memory {type(interactions).__name__} of {table.num_rows:,} rows"
    return Path(write_dataset(ds, out))


def evaluate_recommendations(recommendations: str | Path | Any, data: str | Path, k: int | Sequence[int] = (10, 20),
                  split: str = "test") -> dict[str, Any]:
    """`slifmr evaluate-recs` from Python: another system's lists (a table path, a DataFrame or an
    Arrow table with user, item and rank or score columns, raw ids) scored on the dataset
    `data`'s `split` at each K, as a run is scored. Returns what the command prints."""
    import tempfile

    import pyarrow.parquet as pq

    from slifmr.data.format import read_dataset
    from slifmr.evaluate_recs import evaluate_recommendations as score_lists
    from slifmr.evaluation import cutoffs

    table = _in_memory_table(recommendations, "recommendations")
    with tempfile.TemporaryDirectory(prefix="slifmr-recs-") as tmp:
        path = recommendations
        if table is not None:
            path = Path(tmp) / "recommendations.parquet"
            pq.write_table(table, path)
        return score_lists(path, read_dataset(data), cutoffs(k), split)


def tune(spec: str | Path | None = None, *, data: str | Path | None = None, storage: str | Path = "runs/tune",
         name: str | None = None, samples: int | None = None, workers_per_trial: int | None = None,
         resume: str | Path | None = None, address: str | None = None) -> dict[str, Any]:
    """`slifmr tune` from Python: a Ray Tune sweep (ASHA) of the search space in `spec`
    (tune_configs/*.yaml), or `resume` an interrupted one. Returns best.json's contents (the
    best trial by validation, its test metrics). Raises KeyboardInterrupt's SweepInterrupted
    (a SlifmrError naming the --resume) on Ctrl-C."""
    from slifmr.tune.sweep import run_sweep

    if (spec is None) == (resume is None):
        raise SlifmrError("give either a sweep file (tune_configs/*.yaml) or resume=SWEEP_DIR")
    return run_sweep(spec, storage, name, samples, workers_per_trial, address, resume,
                     str(data) if data is not None else None)


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    """A new, empty folder `root/<variant>-seed<seed>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ...
    added when that name is taken (a loop of short runs within one second, two processes)."""
    from slifmr.atomic import claim_new_folder

    return claim_new_folder(root, f"{cfg.variant}-seed{cfg.train.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
