"""One set of rules for the options of a training run, whoever sets them: `slifmr train`'s flags
and `slifmr.train()`'s keyword arguments are both config keys (slifmr/config.py's dataclasses)
plus the launch's own (workers, gpu, address, max_failures), and are refused by the same code
when they would be accepted and have no effect. Only how an option is written in the message
differs (`Spelling`): `--fanout` on the command line, `fanout` in Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slifmr.arguments import check_int
from slifmr.closed_forms import CLOSED_FORMS
from slifmr.config import Config
from slifmr.errors import SlifmrError

# the command line's flags for config keys and launch options (every other key: --set KEY=VALUE)
FLAGS = {"data": "--data", "train.epochs": "--epochs", "train.seed": "--seed", "train.strategy": "--strategy",
         "train.zero_stage": "--zero-stage", "train.sampling": "--sampling", "train.fanout": "--fanout",
         "train.tracker": "--tracker", "train.tracking_uri": "--tracking-uri", "workers": "--workers", "gpu": "--gpu",
         "address": "--address", "max_failures": "--max-failures"}
@dataclass(frozen=True)
class Spelling:
    """How the caller writes options: "flag" (`--fanout`, `--tracker mlflow`) or "keyword"
    (`fanout`, `tracker='mlflow'`)."""

    style: str

    def name(self, key: str) -> str:
        if self.style == "flag":
            return FLAGS.get(key, key)
        return key.rpartition(".")[2]

    def setting(self, key: str, value: Any) -> str:
        return f"{self.name(key)} {value}" if self.style == "flag" else f"{self.name(key)}={value!r}"


COMMAND_LINE, PYTHON = Spelling("flag"), Spelling("keyword")


def check_options(cfg: Config, given: Sequence[str], spelling: Spelling, *, from_file: Sequence[str] = (),
                  workers: int = 0, gpu: bool = False, address: str | None = None, max_failures: int = 0,
                  resume: bool = False) -> None:
    """Refuse options that would be accepted and have no effect. `given`: the config keys set
    explicitly (flags, --set, keyword arguments), in order; `from_file`: those of a --config
    file (checked against a closed form's keys only: a saved config names every key). Raises
    SlifmrError naming the options."""
    n, v, t = spelling.name, spelling.setting, cfg.train
    if cfg.variant in CLOSED_FORMS:
        _check_closed_form(cfg.variant, [*given, *from_file], spelling, workers, gpu, address, max_failures, resume)
    workers = check_int(n("workers"), workers, 0)
    if workers == 0:
        for key, value in (("address", address), ("max_failures", max_failures)):
            if value:
                raise SlifmrError(f"{n(key)} applies to Ray Train runs: add {v('workers', 'N')} (N >= 1)")
        if t.strategy != "ddp":
            raise SlifmrError(f"{v('train.strategy', t.strategy)} needs {n('workers')} >= 1 (Ray Train)")
    if max_failures < 0:
        raise SlifmrError(f"{n('max_failures')} must be >= 0, got {max_failures}")
    if "train.zero_stage" in given and t.strategy != "deepspeed":
        raise SlifmrError(f"{n('train.zero_stage')} applies to {v('train.strategy', 'deepspeed')} only")
    if "train.fanout" in given and t.sampling == "full":
        raise SlifmrError(f"{n('train.fanout')} applies to {n('train.sampling')} neighbor or history only")
    if "train.tracking_uri" in given and t.tracking_uri and t.tracker != "mlflow":
        raise SlifmrError(f"{n('train.tracking_uri')} applies to {v('train.tracker', 'mlflow')} "
                          f"(the tracker is {t.tracker or 'none'})")


def _check_closed_form(variant: str, keys: Sequence[str], spelling: Spelling, workers: int, gpu: bool,
                       address: str | None, max_failures: int, resume: bool) -> None:
    """A closed-form variant (slifmr/closed_forms.py): the options of gradient training do not apply."""
    if resume:
        raise SlifmrError(f"variant {variant} is solved in one go: there is nothing to resume (train it again with --out)")
    ignored = [spelling.name(k) for k, value in (("workers", workers), ("gpu", gpu), ("max_failures", max_failures),
                                                 ("address", address)) if value]
    reads = CLOSED_FORMS[variant].config_reads
    for key in dict.fromkeys(keys):
        if key == "train.seed" and "train.seed" not in CLOSED_FORMS[variant].reads and "train.eval_users" not in keys:
            ignored.append(f"{spelling.name(key)} (it draws the train.eval_users sample only)")
        elif key not in (*reads, "variant", "data"):
            ignored.append(spelling.name(key))
    if ignored:
        raise SlifmrError(f"{', '.join(ignored)} do(es) not apply to variant {variant}, a closed form solved in one "
                          f"process (it reads {', '.join(reads)})")
