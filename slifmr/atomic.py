"""Atomic file writes: write a temporary sibling, then one rename onto the target, so a
reader or a crash sees the old file or the new one, never half of one. (Dataset and
checkpoint folders are swapped the same way, folder-wide: slifmr.data.format,
slifmr.distributed.checkpoint.)"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
