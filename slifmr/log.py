"""The one place that talks to the user: log lines and progress bars.

Everything below the command line reports through here, so a Ray worker, a test or a
notebook can silence or redirect it in one spot.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
logger = logging.getLogger("slifmr")
_progress_enabled = True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (pytest and notebooks swap it)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup(level: int = logging.INFO, progress: bool = True) -> None:
    """Send slifmr's log lines to stderr; `progress=False` hides progress bars (CI, workers)."""
    global _progress_enabled
    _progress_enabled = progress and sys.stderr.isatty()
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def info(msg: str) -> None:
    logger.info(msg)


def warning(msg: str) -> None:
    logger.warning(f"warning: {msg}")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A progress bar when stderr is a terminal, the bare iterable otherwise."""
    if not _progress_enabled:
        yield from items
        return
    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
