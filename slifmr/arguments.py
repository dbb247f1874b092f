"""One rule for the arguments of every entry point (command line, Python API, export).

Numbers: an integer option is an `int` (not a bool, not 2.5) within its range; a float option
is finite and within its range. A value outside is refused before any work, in one line naming
the option and the value (SlifmrError, exit status 2 on the command line; argparse's own
error on the command line, also one line and exit 2).

Lists of ids: a bare string is one id (never its characters); a list, tuple or other iterable
of strings or integers is a list of ids; anything else is refused naming the argument."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from typing import Any

from slifmr.errors import SlifmrError


def _range_text(low: float | None, high: float | None, open_low: bool = False, open_high: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f"{'>' if open_low else '>='} {low}"
    return f"{'<' if open_high else '<='} {high}" if high is not None else "a number"


def check_int(name: str, value: Any, low: int | None = 1, high: int | None = None) -> int:
    """`value` as an int in [low, high]; raises SlifmrError naming `name` and the value otherwise."""
    import numpy as np

    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        raise SlifmrError(f"{name} must be an integer {_range_text(low, high)}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                open_low: bool = False, open_high: bool = False) -> float:
    """`value` as a finite float within the range (open ends where asked); SlifmrError otherwise."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad:
        bad = (low is not None and (value <= low if open_low else value < low)) or \
              (high is not None and (value >= high if open_high else value > high))
    if bad:
        raise SlifmrError(f"{name} must be a finite number {_range_text(low, high, open_low, open_high)}, got {value!r}")
    return float(value)


def id_list(name: str, value: Any) -> list[str]:
    """Raw ids as a list of strings: a bare str (or int) is one id; an iterable of str/int is
    taken element by element. Raises SlifmrError naming `name` for anything else."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
        raise SlifmrError(f"{name} must be an id or a list of ids, got {type(value).__name__} {value!r:.60}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise SlifmrError(f"{name} must hold ids (strings), got {type(v).__name__} {v!r:.60}")
        out.append(str(v))
    return out


def cli_int(low: int | None = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type=` for an integer option in [low, high] (argparse names the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {_range_text(low, high)}, got {text!r}") from None
        try:
            return check_int("", value, low, high)
        except SlifmrError:
            raise argparse.ArgumentTypeError(f"must be an integer {_range_text(low, high)}, got {text}") from None
    parse.__name__ = "integer"
    return parse


def cli_float(low: float | None = None, high: float | None = None, open_low: bool = False,
              open_high: bool = False) -> Callable[[str], float]:
    """An argparse `type=` for a finite float option within the range."""
    def parse(text: str) -> float:
        try:
            return check_float("", float(text), low, high, open_low, open_high)
        except (ValueError, SlifmrError):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {_range_text(low, high, open_low, open_high)}, got {text}") from None
    parse.__name__ = "number"
    return parse
