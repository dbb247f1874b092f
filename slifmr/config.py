"""Configuration: plain dataclasses, loaded from YAML and overridden on the command line.

    cfg = load_config("my.yaml", variant="static", overrides=["model.k_corr=20", "train.lr=5e-4"])

Every design switch (docs/architecture.md §1) is a field of ModelConfig. Unknown keys and values of the
wrong type raise ConfigError (one line, exit status 2 at the command line).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slifmr.atomic import write_text
from slifmr.closed_forms import CLOSED_FORMS
from slifmr.errors import ConfigError

# what train.stop_metric may select (slifmr/evaluation.py; higher is better, so not arp@K,
# whose goal is lower)
STOP_METRICS = ("recall", "ndcg", "precision", "hit", "mrr", "map", "coverage", "tail")


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    ui_layers: int = 2  # LightGCN layers over A(t)
    kg_layers: int = 1  # attentive aggregation layers over KG(t)
    mm_layers: int = 1  # propagation layers over A_mm(t)
    use_kg: bool = True  # KG view (off by itself when the dataset has no KG)
    use_mm: bool = True  # multimodal view (off by itself without features)
    # self-loop fusion: S(t) from the previous epoch's fused item representations
    self_loop: bool = True
    k_corr: int = 10
    corr_binary: bool = False  # binarise S(t) weights
    warmup_epochs: int = 1  # epochs on the static graphs before the first fusion
    refresh_every: int = 1  # rebuild S(t) every this many epochs
    knn: str = "exact"  # S(t)'s top-k search: exact (chunked matmul) | approx (faiss IVF-Flat, for large N)
    fuse_ui: bool = True  # A(t) item-item block gets gamma * S(t)
    fuse_kg: bool = True  # S(t) edges join the KG as relation correlated_with
    fuse_mm: bool = True  # A_mm(t) = (1 - beta) A_mm + beta S(t)
    gamma: float = 0.2
    beta: float = 0.5
    # the self-loop's item-item ridge head (slifmr/model/ridge.py): every item's interactions
    # regressed on those of its ridge_k nearest neighbours in Z(t-1); its score x_u W(t) is
    # added at ranking with this weight (both scores standardised per user; 0 = off; it needs
    # the self-loop's search, so it is off with self_loop false)
    ridge_weight: float = 0.5
    ridge_k: int = 100
    ridge_l2: float = 200.0
    # the head's regressors N_j: z (Z(t-1)'s ridge_k nearest neighbours, the self-loop's), cooc
    # (the ridge_k most co-occurring items, as variant cooc_ridge), union (half the
    # co-occurring ones, then Z's neighbours, then more co-occurring ones, ridge_k in all), full
    # (every other item: the EASE head), or auto: the run chooses the rule among ridge_rules, k
    # among ridge_k_choices and l2 among ridge_l2_choices on its validation users
    # (slifmr/training/ridge_head.py); with a fixed rule, ridge_k and ridge_l2 are used as set
    ridge_neighbours: str = "auto"
    ridge_rules: list[str] = field(default_factory=lambda: ["z", "cooc", "union", "full"])
    ridge_k_choices: list[int] = field(default_factory=list)  # empty = [ridge_k]
    # empty = ease_l2, the closed-form peers' grid; ridge_l2 is always one of the choices
    ridge_l2_choices: list[float] = field(default_factory=list)
    ridge_full_max_items: int = 4096  # the full (EASE) rule where N <= this: a dense N x N solve
    # l2 tuned again when less than this share of Z(t-1)'s first neighbours are those of the last tuning
    ridge_rechoose_overlap: float = 0.5
    # the candidates (at their tuned l2) compared again every this many fusions: Z(t-1) keeps
    # training, so a head that lost early may win later (0 = only when l2 is tuned)
    ridge_rechoose_every: int = 5
    # the blend chosen by the data: at every validation the ranking is scored with each of these
    # ridge weights and ridge_weight (0 = the embeddings alone; 1000: the head alone, the
    # embeddings breaking its ties) and the best by train.stop_metric is the epoch's, kept with
    # its checkpoint; validation only, never test. Empty = ridge_weight, fixed.
    ridge_blend: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 1000.0])
    # items with no training interaction (the cold-start protocol's held-out items, slifmr/data/cold.py):
    # on, they are never drawn as BPR negatives (unknown is not disliked) and the ridge head scores
    # each as the mean of its content neighbours' scores (A_mm's row); auto: on for a dataset made
    # by `slifmr data hold-out`, off otherwise (the warm protocol as MMRec runs it)
    place_cold_items: str = "auto"
    # with cold items placed: at the end of training the run mixes content into their scores
    # (content_knn's cosine, weight lambda) and lifts them (offset delta), choosing (lambda,
    # delta) on validation to place the most held-out items while giving up at most this share
    # of the validation train.stop_metric on all items (slifmr/training/cold_placement.py)
    cold_tolerance: float = 0.02
    # multimodal item graph
    k_mm: int = 10
    mm_propagate_ids: bool = True  # FREEDOM: item ID embeddings propagated over A_mm
    mm_view_features: bool = True  # the MM view includes the projected modality features (FREEDOM: ids only)
    # fusion of views
    fusion: str = "residual"  # residual | attention
    alpha_kg: float = 1.0
    alpha_mm: float = 1.0
    fuse_normalize: bool = True  # residual fusion adds normalize(h_kg), normalize(h_mm) (FREEDOM: h_mm as is)
    user_aux: bool = False  # users also get the mean auxiliary part of their training items
    # CF graph
    edge_dropout: float = 0.0  # FREEDOM's degree-sensitive share of user-item edges dropped per epoch
    # S(t) as a denoiser: up to this share of each user's training edges leave the propagation
    # graphs, those S(t) supports least (slifmr/model/graphs.py, denoise_ui_edges; 0 = off)
    ui_denoise: float = 0.0
    # XSimGCL-style perturbation of the CF layers' outputs while training (0 = off)
    perturb_eps: float = 0.0
    # KG
    kg_add_inverse: bool = True  # add (t, r^-1, h) for every (h, r, t)
    kg_min_triples: int = 2  # drop entities (not items) in fewer triples (KGAT filters < 10)
    # losses
    loss: str = "bpr"  # bpr (one negative) | softmax (in-batch sampled softmax, cosine / softmax_tau)
    softmax_tau: float = 0.2
    lambda_sc: float = 0.05  # semantic consistency (InfoNCE)
    tau: float = 0.2
    sc_max_items: int = 256  # InfoNCE over at most this many batch items (cost grows with its square)
    lambda_reg: float = 1e-4
    lambda_kg: float = 0.0  # TransR KG loss (off by default)
    # closed-form variants (ease, cooc_ridge; pop has none): the ridge weights tried, the best chosen on validation (Steck 2019)
    ease_l2: list[float] = field(default_factory=lambda: [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0])
    # variant ials (implicit's iALS, slifmr/model/ials.py): every (alpha, reg) pair is fitted, the
    # best chosen on validation; factors = embedding_dim
    ials_alpha: list[float] = field(default_factory=lambda: [1.0, 5.0, 20.0])
    ials_reg: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0])
    ials_iterations: int = 15

    @property
    def head(self) -> HeadConfig:
        """The ridge head's section (slifmr/training/ridge_head.py), read from its model.ridge_*
        keys (flat in YAML and on the command line, as they have always been written)."""
        return HeadConfig(enabled=self.self_loop and self.ridge_weight > 0, weight=self.ridge_weight, k=self.ridge_k,
                          l2=self.ridge_l2, neighbours=self.ridge_neighbours, rules=tuple(self.ridge_rules),
                          k_choices=tuple(self.ridge_k_choices), l2_choices=tuple(self.ridge_l2_choices or self.ease_l2),
                          full_max_items=self.ridge_full_max_items, rechoose_overlap=self.ridge_rechoose_overlap,
                          rechoose_every=self.ridge_rechoose_every, blend=tuple(self.ridge_blend))


@dataclass(frozen=True)
class HeadConfig:
    """What the ridge head reads, and nothing else (`ModelConfig.head`): whether the run has one
    (the self-loop on, model.ridge_weight > 0), its fixed weight, k, l2 and rule, the choices
    under rule auto (rules, k_choices, l2_choices: model.ridge_l2_choices, else the closed forms'
    model.ease_l2), the EASE head's catalogue limit, when to choose again, and the blend grid."""

    enabled: bool
    weight: float
    k: int
    l2: float
    neighbours: str
    rules: tuple[str, ...]
    k_choices: tuple[int, ...]
    l2_choices: tuple[float, ...]
    full_max_items: int
    rechoose_overlap: float
    rechoose_every: int
    blend: tuple[float, ...]


@dataclass
class TrainConfig:
    epochs: int = 200
    # slifmr's default, chosen on validation (benchmarks/RESULTS.md, "Accuracy on ml-100k: slifmr against the
    # peers, final defaults"): a step propagates the whole graph whatever its batch, so 4,096
    # halves the steps of an epoch; the learning rate doubles with it (the linear scaling rule,
    # Goyal et al. 2017). The peers (mf, lightgcn, freedom) keep MMRec's 2,048.
    batch_size: int = 4096
    lr: float = 1e-2
    # learning rate per epoch: constant | cosine (lr at epoch 1, 0 at epoch train.epochs + 1:
    # SGDR without restarts, Loshchilov and Hutter, ICLR 2017; a resume with other --epochs
    # changes its period) | exponential (lr * lr_gamma^(epoch - 1))
    lr_schedule: str = "constant"
    lr_gamma: float = 0.98
    weight_decay: float = 0.0
    patience: int = 20  # early stopping on validation Recall@20
    seed: int = 0
    topk: list[int] = field(default_factory=lambda: [10, 20])
    eval_chunk: int = 1024  # users per full-ranking chunk (bounds memory)
    threads: int = 0  # torch threads per process; 0 = the cores this process owns
    stop_metric: str = "recall@20"
    strategy: str = "ddp"  # how replicas stay identical: ddp, or deepspeed (ZeRO) under Ray Train
    zero_stage: int = 2  # with strategy deepspeed: 1 shards optimizer state, 2 gradients too
    # mini-batches: full (propagate the whole graph each step) | neighbor (two-hop sampled
    # subgraphs) | history (one sampled hop per step over historical embeddings refreshed each
    # epoch, with variance reduction: LTGNN, WWW 2024; slifmr/sampling/history.py)
    sampling: str = "full"
    # neighbors per hop, optionally per relation: "10,5;kg=5,0"; history samples every layer
    # with the first hop's fan-out (10 here, kg 5)
    fanout: str = "10,5"
    # history: seeds (GAS, Fey et al., ICML 2021): only the batch's own rows are read and
    # updated, every other node enters at its historical embedding; or sampled (LTGNN): the
    # sampled neighbours' current rows too, and gradients reach them (dearer per step, as
    # accurate on ml-100k: benchmarks/RESULTS.md, "Scale: sampled and history training")
    history_grad: str = "seeds"
    # history: optimiser steps between refreshes of the historical embeddings within an epoch
    # (0: once per epoch, at its start); each refresh is one layer-wise forward over the graph
    history_refresh: int = 0
    # neighbor / history: where a step's subgraph is drawn. model: on the model's device (a GPU
    # draws it in a few kernels; the graph's CSC arrays then live in GPU memory too); cpu: on
    # the CPU, then copied (what pyg-lib or torch-sparse, when installed, sample on)
    sample_device: str = "model"
    steps_per_epoch: int = 0  # 0 = one pass over the training pairs
    eval_users: int = 0  # evaluate on a seeded sample of this many users (0 = all; for scale runs)
    # gradients across workers: dense (one flat all-reduce after backward), sparse (the tables'
    # touched rows only), auto (full graph: dense; sampled: sparse when the touched rows are
    # smaller than the table), or ddp (full graph: torch's DistributedDataParallel, all-reduce
    # in buckets overlapped with backward; slower than dense on CPU, benchmarks/RESULTS.md)
    grad_sync: str = "auto"
    # experiment tracking (slifmr/tracking.py): none | tensorboard | mlflow | wandb; the MLflow store
    # (default: sqlite at the run folder's parent, mlflow.db) and experiment
    tracker: str = "none"
    tracking_uri: str = ""
    tracking_experiment: str = "slifmr"


@dataclass
class Config:
    variant: str = "slifmr"
    data: str | None = None  # dataset folder; None = the embedded ml-100k
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Named variants (docs/architecture.md §1): overrides applied on top of the defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "slifmr": {},
    # peers in the same harness (README "Variants"): BPR-MF (Rendle et al., UAI 2009), FREEDOM
    # (Zhou and Shen, ACM MM 2023: LightGCN over the degree-sensitively pruned user-item graph,
    # plus the frozen modality kNN graph over item ID embeddings, h_i = h_cf + h_mm), EASE
    "mf": {"train.batch_size": 2048, "train.lr": 5e-3, "model.loss": "bpr", "model.ridge_weight": 0.0, "model.ui_layers": 0, "model.use_kg": False, "model.use_mm": False, "model.self_loop": False,
           "model.lambda_sc": 0.0},
    "freedom": {"train.batch_size": 2048, "model.loss": "bpr", "model.ridge_weight": 0.0, "model.use_kg": False, "model.self_loop": False, "model.lambda_sc": 0.0, "model.edge_dropout": 0.8,
                "model.k_mm": 10, "model.ui_layers": 2, "model.mm_layers": 1, "model.mm_propagate_ids": True,
                "model.mm_view_features": False, "model.fuse_normalize": False, "model.alpha_mm": 1.0,
                # MMRec's FREEDOM: learning rate 0.001, a BPR loss without embedding L2, up to
                # 1000 epochs (at lr 0.001 it is still improving at our default 200)
                "train.lr": 0.001, "model.lambda_reg": 0.0, "train.epochs": 1000},
    # the closed forms (slifmr/closed_forms.py: ease, cooc_ridge, pop, ials, content_knn): solved, not trained
    **{name: {} for name in CLOSED_FORMS},
    "static": {"model.self_loop": False, "model.ridge_weight": 0.0},
    "no_ridge": {"model.ridge_weight": 0.0},
    "no_sc": {"model.lambda_sc": 0.0},
    "no_kg": {"model.use_kg": False},
    "no_mm": {"model.use_mm": False},
    "lightgcn": {"train.batch_size": 2048, "train.lr": 5e-3, "model.loss": "bpr", "model.ridge_weight": 0.0, "model.use_kg": False, "model.use_mm": False, "model.self_loop": False, "model.lambda_sc": 0.0},
}


# Named presets: config layers for a kind of run, under the YAML file and the variant.
PRESETS: dict[str, dict[str, Any]] = {
    # what a user with 10^7-10^8 interactions runs (README "Training at scale"): one sampled hop
    # per step over historical embeddings (a step costs its batch, not the graph), the self-loop
    # whole (the ridge head on, its solves sharded, the blend chosen on validation) with the
    # union head (co-occurring items and Z's neighbours: a head from the first epoch, ahead of
    # Z's neighbours alone on planted data, level on ml-100k; RESULTS.md, "Scale: sampled and history training"), S(t)'s
    # search by faiss IVF-Flat with its recall logged, validation on a seeded 10,000-user sample
    "scale": {"train.sampling": "history", "model.knn": "approx", "model.ridge_neighbours": "union",
              "train.eval_users": 10000},
}



def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # one value (--set model.ease_l2=800, ease_l2=800): a list of one
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return str(value)
    return value


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key ('model.k_corr', 'train.lr', 'variant') with type checking."""
    parts = key.split(".")
    obj: Any = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or p not in _field_types(type(obj)):
            raise ConfigError(f"unknown config key '{key}'")
        obj = getattr(obj, p)
    name = parts[-1]
    hints = _field_types(type(obj)) if dataclasses.is_dataclass(obj) else {}
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"unknown config key '{key}'")
    setattr(obj, name, _coerce(value, hints[name], key))


# The allowed values of every enumerated key: validation, the command line's choices and the
# strategy / kNN modules all read them here.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.loss": ("bpr", "softmax"),
    "model.fusion": ("residual", "attention"),
    "model.knn": ("exact", "approx"),
    "model.ridge_neighbours": ("auto", "z", "cooc", "union", "full"),
    "model.place_cold_items": ("auto", "on", "off"),
    "train.strategy": ("ddp", "deepspeed"),
    # stage 3 shards the parameters, which full-graph propagation needs whole
    "train.zero_stage": (1, 2),
    "train.sampling": ("full", "neighbor", "history"),
    "train.history_grad": ("sampled", "seeds"),
    "train.sample_device": ("model", "cpu"),
    "train.grad_sync": ("auto", "dense", "sparse", "ddp"),
    "train.lr_schedule": ("constant", "cosine", "exponential"),
    "train.tracker": ("none", "tensorboard", "mlflow", "wandb"),
}


def _one_of(values: tuple[Any, ...]) -> str:
    shown = [repr(v) if isinstance(v, str) else str(v) for v in values]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


# Keys a resumed run may change: how long and how it runs, not what is trained.
RUNTIME_KEYS = ("train.epochs", "train.threads", "train.eval_chunk", "train.grad_sync", "train.tracker",
                "train.tracking_uri", "train.tracking_experiment")


def flatten_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'k_corr': 10}} -> {'model.k_corr': 10} (the keys --set takes)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_variant(cfg: Config, variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant '{variant}' (choose from {', '.join(VARIANTS)})")
    cfg.variant = variant
    for k, v in VARIANTS[variant].items():
        set_key(cfg, k, v)


def _assemble(d: dict[str, Any], source: str) -> Config:
    """A Config from a (nested) dict, types checked, ranges not yet: the variant first, explicit
    keys win."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys")
    cfg = Config()
    flat = flatten_config(d)
    apply_variant(cfg, str(flat.pop("variant", "slifmr")))
    for k, v in flat.items():
        set_key(cfg, k, v)
    return cfg


def from_dict(d: dict[str, Any], source: str = "config") -> Config:
    """A validated Config from a (nested) dict; the variant is applied first, explicit keys win."""
    cfg = _assemble(d, source)
    validate(cfg)
    return cfg


# Keys added after runs were saved without them, and the value those runs trained with: a
# saved config (a run's config.yaml, a checkpoint's meta) that lacks one takes it, not the
# current default, so an old run resumes, evaluates and serves as it was trained.
ADDED_KEYS: dict[str, Any] = {"model.ridge_weight": 0.0, "model.kg_min_triples": 1, "model.ridge_blend": []}


def saved_config(d: dict[str, Any], source: str = "config") -> Config:
    """The validated Config of a run as saved (`save_config`, checkpoint meta): keys missing
    from it take their ADDED_KEYS value."""
    if not isinstance(d, dict):
        return from_dict(d, source)  # refused, naming the source
    flat = flatten_config(d)  # from_dict takes dotted keys as well as nested ones
    return from_dict({**{k: v for k, v in ADDED_KEYS.items() if k not in flat}, **flat}, source)


def copy_config(cfg: Config) -> Config:
    return copy.deepcopy(cfg)


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set '{item}': expected key=value (e.g. model.k_corr=20)")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested mapping of config keys in a YAML file; ConfigError if it is not one."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: invalid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p}: expected a mapping of config keys")
    return d


def load_config(path: str | Path | None = None, variant: str | None = None, overrides: list[str] | None = None,
                settings: list[tuple[str, Any]] | None = None, preset: str | None = None) -> Config:
    """Defaults <- `preset` (PRESETS) <- YAML file <- --variant <- --set key=value overrides <-
    `settings` (the (key, value) pairs of a command's own flags), validated once, at the end."""
    d = read_config_file(path) if path is not None else {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        if (variant or d.get("variant")) in CLOSED_FORMS:
            raise ConfigError(f"preset {preset} sets how gradient training samples and searches; variant "
                              f"{variant or d.get('variant')} is a closed form: run it without --preset")
        d = {**PRESETS[preset], **flatten_config(d)}
    if variant is not None:
        d = {**d, "variant": variant}
    cfg = _assemble(d, str(path or "config"))
    for item in overrides or []:
        key, value = parse_override(item)
        if key == "variant":
            raise ConfigError("use --variant to choose a variant")
        set_key(cfg, key, value)
    for key, value in settings or []:
        set_key(cfg, key, value)
    resolve_locations(cfg)
    validate(cfg)
    return cfg


def resolve_locations(cfg: Config) -> None:
    """Make `data` and `train.tracking_uri` absolute where they are relative (slifmr/paths.py):
    a run records where its data is, not where the shell was, so every later command (evaluate,
    recommend, export, resume, load_run from a notebook) works from any folder."""
    from slifmr.paths import absolute_path, absolute_uri

    if cfg.data is not None:
        cfg.data = absolute_path(cfg.data)
    cfg.train.tracking_uri = absolute_uri(cfg.train.tracking_uri)


def validate(cfg: Config) -> None:
    """Check every field's range (not only its type); raises ConfigError naming the key."""
    m, t = cfg.model, cfg.train
    flat = flatten_config(cfg.to_dict())
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} must be {_one_of(allowed)}, got {flat[key]!r}")
    for section, obj in (("model", m), ("train", t)):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {value}")
    checks = [
        (m.embedding_dim > 0, "model.embedding_dim must be positive"),
        (m.ui_layers >= 0 and m.kg_layers >= 0 and m.mm_layers >= 0, "layer counts must be >= 0"),
        (m.k_corr > 0 and m.k_mm > 0, "model.k_corr and model.k_mm must be positive"),
        (m.warmup_epochs >= 0, "model.warmup_epochs must be >= 0"),
        (m.refresh_every > 0, "model.refresh_every must be positive"),
        (m.gamma >= 0, "model.gamma must be >= 0"),
        (0.0 <= m.beta <= 1.0, "model.beta must be in [0, 1]"),
        (m.alpha_kg >= 0 and m.alpha_mm >= 0, "model.alpha_kg and model.alpha_mm must be >= 0"),
        (0.0 <= m.edge_dropout < 1.0, "model.edge_dropout must be in [0, 1)"),
        (0.0 <= m.ui_denoise < 1.0, "model.ui_denoise must be in [0, 1)"),
        (m.perturb_eps >= 0.0, "model.perturb_eps must be >= 0"),
        (0.0 < t.lr_gamma <= 1.0, "train.lr_gamma must be in (0, 1]"),
        (m.ridge_weight >= 0 and m.ridge_k > 0 and m.ridge_l2 > 0,
         "model.ridge_weight must be >= 0, model.ridge_k and model.ridge_l2 positive"),
        (m.lambda_sc >= 0 and m.lambda_reg >= 0 and m.lambda_kg >= 0,
         "model.lambda_sc, model.lambda_reg and model.lambda_kg must be >= 0"),
        (m.tau > 0 and m.softmax_tau > 0, "model.tau and model.softmax_tau must be positive"),
        (m.sc_max_items >= 2, "model.sc_max_items must be >= 2 (InfoNCE needs negatives)"),
        (m.kg_min_triples >= 1, "model.kg_min_triples must be >= 1"),
        (t.epochs > 0 and t.batch_size > 0 and t.patience > 0, "train.epochs, batch_size and patience must be positive"),
        (t.lr > 0, "train.lr must be positive"),
        (all(math.isfinite(v) and v >= 0 for v in m.ridge_blend), "model.ridge_blend must list finite weights >= 0"),
        (len(m.ridge_rules) > 0 and all(r in ("z", "cooc", "union", "full") for r in m.ridge_rules),
         "model.ridge_rules must list rules among z, cooc, union, full"),
        (all(k > 0 for k in m.ridge_k_choices), "model.ridge_k_choices must list positive sizes"),
        (all(math.isfinite(v) and v > 0 for v in m.ridge_l2_choices), "model.ridge_l2_choices must list positive finite ridge weights"),
        (m.ridge_full_max_items >= 0, "model.ridge_full_max_items must be >= 0"),
        (len(m.ials_alpha) > 0 and len(m.ials_reg) > 0 and all(math.isfinite(v) and v > 0 for v in m.ials_alpha + m.ials_reg)
         and m.ials_iterations > 0, "model.ials_alpha and model.ials_reg must list positive finite values, "
         "model.ials_iterations be positive"),
        (0.0 <= m.ridge_rechoose_overlap <= 1.0, "model.ridge_rechoose_overlap must be in [0, 1]"),
        (0.0 <= m.cold_tolerance < 1.0, "model.cold_tolerance must be in [0, 1)"),
        (m.ridge_rechoose_every >= 0, "model.ridge_rechoose_every must be >= 0"),
        (len(m.ease_l2) > 0 and all(math.isfinite(v) and v > 0 for v in m.ease_l2),
         "model.ease_l2 must list positive finite ridge weights"),
        (not (cfg.variant in CLOSED_FORMS and (t.sampling != "full" or t.strategy != "ddp")),
         f"variant {cfg.variant} is a closed form solved in one process: no train.sampling or train.strategy applies"),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (t.seed >= 0, "train.seed must be >= 0"),
        (t.eval_chunk > 0, "train.eval_chunk must be positive"),
        (t.threads >= 0, "train.threads must be >= 0 (0 = the cores this process owns)"),
        (len(t.topk) > 0 and all(k > 0 for k in t.topk) and len(set(t.topk)) == len(t.topk),
         "train.topk must list distinct positive cutoffs"),
        (t.stop_metric.split("@")[0] in STOP_METRICS
         and t.stop_metric.partition("@")[2].isdigit() and int(t.stop_metric.partition("@")[2]) in t.topk,
         f"train.stop_metric must be one of {'/'.join(STOP_METRICS)}@K with K in train.topk"),
        (not (t.sampling != "full" and m.user_aux),
         f"model.user_aux needs every training item of a user: it cannot be used with train.sampling={t.sampling}"),
        (not (t.sampling != "full" and t.strategy == "deepspeed"),
         f"train.sampling={t.sampling} trains the embedding tables with sparse row updates: use --strategy ddp"),
        (not (t.strategy == "deepspeed" and t.grad_sync == "ddp"),
         "train.grad_sync=ddp is torch's DDP: --strategy deepspeed exchanges gradients itself"),
        (not (t.sampling != "full" and t.grad_sync == "ddp"),
         "train.grad_sync=ddp is for full-graph steps: sampled steps have sparse table gradients (use auto)"),
        (not (t.sampling != "full" and t.weight_decay > 0),
         f"train.weight_decay applies to every table row each step: with train.sampling={t.sampling} use model.lambda_reg"),
        (t.steps_per_epoch >= 0 and t.eval_users >= 0, "train.steps_per_epoch and train.eval_users must be >= 0"),
        (t.history_refresh >= 0, "train.history_refresh must be >= 0 (0: once per epoch)"),
        (t.sampling == "history" or (t.history_refresh == 0 and t.history_grad == "seeds"),
         "train.history_refresh and train.history_grad apply to train.sampling=history only"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if t.sampling != "full":
        from slifmr.fanout import sampling_fanouts

        layers = {"cf": m.ui_layers} | ({"kg": m.kg_layers} if m.use_kg else {}) | ({"mm": m.mm_layers} if m.use_mm else {})
        sampling_fanouts(t.sampling, t.fanout, layers)


def save_config(cfg: Config, path: Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
