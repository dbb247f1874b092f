"""Atomic writes: write a temporary sibling, then one rename onto the target, so a reader or a
crash sees the old file or folder or the new one, never half of one (`atomic_path` for files,
`atomic_folder` for dataset, checkpoint and export folders)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path`, with the same suffix (writers that infer the format from
    it still work), renamed onto `path` when the block ends without an error and removed
    otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """`Path.write_text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_folder(path: str | os.PathLike, previous: str | os.PathLike | None = None) -> Iterator[Path]:
    """A new, empty temporary folder beside `path` to fill; when the block ends without an
    error it becomes `path`. A folder already at `path` is moved to `previous` (replacing what
    was there: a kept generation) or, without one, removed once the new folder is in place. On
    an error the temporary folder is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(previous) if previous is not None else path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            if old.exists():
                shutil.rmtree(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None and previous is None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def claim_new_folder(parent: str | os.PathLike, stem: str) -> Path:
    """Create and return a folder `parent/stem` that did not exist before this call: `stem`,
    else `stem-2`, `stem-3`, ... `mkdir` is atomic, so two callers (threads, processes, or one
    loop within one second) never get the same folder."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100_000):
        path = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free name {stem}-N")


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (or a notebook's Interrupt, which is the same SIGINT) during the body is raised when
    it ends, so a write finishes first: a KeyboardInterrupt inside a tracker's database write would
    leave MLflow's sqlite connection mid-transaction (every later tracked run in the process
    failed on it), and one inside torch.save surfaced as a failed checkpoint write (exit 2 with
    "Bad file descriptor" instead of 130 and the resume line). A second Ctrl-C is raised at once.
    Only the main thread receives signals: elsewhere the body runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple[int, Any]] = []

    def defer(signum: int, frame: Any) -> None:
        if pending:  # a second Ctrl-C does not wait (a tracker stuck in its server's retries)
            raise KeyboardInterrupt
        pending.append((signum, frame))

    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            signal.raise_signal(signal.SIGINT)  # delivered again, to whatever handler was in place
