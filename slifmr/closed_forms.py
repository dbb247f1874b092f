"""The closed-form variants: models solved in one go instead of trained by gradient steps,
registered here, once. Everything else (config's variant list, the options a closed form reads,
the training recipe, `recommend`, export and the cold-start protocol) asks this registry.

A new closed-form baseline is two files: its model (slifmr/model/NAME.py, a torch module with
`fit(**point)`, `finite()`, `full_scores(users) -> (B, N)` and `export_scores()`, its solved
weights as buffers so that `state_dict` saves them) and its entry in `CLOSED_FORMS` below.

Kept free of torch and of the models (imported when built), so that slifmr/config.py can read it."""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slifmr.config import Config
    from slifmr.data.format import Dataset

# what every closed form reads: its evaluation, threads and tracker (train.seed draws the
# train.eval_users sample)
COMMON_READS = ("train.topk", "train.stop_metric", "train.eval_chunk", "train.eval_users", "train.seed",
                "train.threads", "train.tracker", "train.tracking_uri", "train.tracking_experiment")


@dataclass(frozen=True)
class ClosedForm:
    """One closed-form variant.

    `model`: "module:Class", built as Class(ds, **arguments(cfg)). `grid`: fit's keyword
    arguments -> the config key listing the values tried; every combination (in the keys'
    order, the last varying fastest) is one solve and one metrics.jsonl line, the best by
    validation kept (Steck 2019 chooses EASE's lambda so). `reads`: the config keys it reads
    besides COMMON_READS and the grid's (train.seed here when the solve itself is seeded; else
    it only draws the train.eval_users sample). `places_cold`: whether it can rank an item without
    training interactions (through content)."""

    model: str
    grid: dict[str, str] = field(default_factory=dict)
    reads: tuple[str, ...] = ()
    arguments: Callable[[Config], dict[str, Any]] = lambda cfg: {}
    places_cold: bool = False
    about: str = ""

    def build(self, cfg: Config, ds: Dataset) -> Any:
        """The model for `ds`, not yet solved."""
        module, _, name = self.model.partition(":")
        return getattr(importlib.import_module(module), name)(ds, **self.arguments(cfg))

    def points(self, cfg: Config) -> list[dict[str, Any]]:
        """fit's keyword arguments for each solve (one empty point without a grid)."""
        values = [_config_value(cfg, key) for key in self.grid.values()]
        return [dict(zip(self.grid, combo, strict=True)) for combo in itertools.product(*values)]

    @property
    def config_reads(self) -> tuple[str, ...]:
        """Every config key the variant reads: the options given for any other are refused."""
        return (*COMMON_READS, *self.grid.values(), *self.reads)


def _config_value(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


CLOSED_FORMS: dict[str, ClosedForm] = {
    "ease": ClosedForm("slifmr.model.ease:EASE", grid={"l2": "model.ease_l2"},
                       about="EASE (Steck, WWW 2019): dense item-item ridge, lambda chosen on validation"),
    "cooc_ridge": ClosedForm("slifmr.model.cooc_ridge:CoocRidge", grid={"l2": "model.ease_l2"}, reads=("model.ridge_k",),
                             arguments=lambda cfg: {"k": cfg.model.ridge_k},
                             about="EASE restricted to each item's model.ridge_k most co-occurring items"),
    "pop": ClosedForm("slifmr.model.popularity:Popularity", about="the most-popular baseline"),
    "ials": ClosedForm("slifmr.model.ials:IALS", grid={"alpha": "model.ials_alpha", "reg": "model.ials_reg"},
                       reads=("model.embedding_dim", "model.ials_iterations", "train.seed"),  # seeds the factors
                       arguments=lambda cfg: {"factors": cfg.model.embedding_dim,
                                              "iterations": cfg.model.ials_iterations,
                                              "seed": cfg.train.seed, "threads": cfg.train.threads},
                       about="implicit's iALS (Hu et al., ICDM 2008), alpha and reg chosen on validation"),
    "content_knn": ClosedForm("slifmr.model.content_knn:ContentKNN", places_cold=True,
                              about="cosine of an item's features to the user's history: a content peer"),
}


def is_closed_form(variant: str) -> bool:
    return variant in CLOSED_FORMS
