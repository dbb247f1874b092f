"""Checkpoints: a folder holding state.pt (tensors and plain values only, loaded with
torch.load(weights_only=True), so a checkpoint cannot execute code) and meta.json.

Two generations are kept: <name>/ (the latest) and <name>.prev/ (the one before). Writes are
atomic: the new folder is written beside them, the latest becomes .prev and the new one takes
its name, each by one rename. A crash between the renames, a truncated or corrupted latest
folder, or a full disk while writing all leave a good checkpoint to load: loading falls back
to .prev, saying why.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from slifmr import log
from slifmr.atomic import atomic_folder, interrupts_deferred
from slifmr.errors import SlifmrError

STATE, META = "state.pt", "meta.json"


class CheckpointError(SlifmrError):
    pass


def first_nonfinite(obj: Any, path: str = "") -> str | None:
    """The key path of the first floating-point tensor holding a NaN or inf, else None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            values = obj.coalesce().values() if obj.is_sparse else obj
            if not bool(torch.isfinite(values).all()):
                return path or "state"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        found = first_nonfinite(v, f"{path}.{k}" if path else str(k))
        if found:
            return found
    return None


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write (state, meta) as the latest generation of `folder`, atomically. Raises
    CheckpointError for a failed write (the previous generation kept) and for a state holding
    a NaN or inf (nothing non-finite is ever saved)."""
    folder = Path(folder)
    bad = first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(f"refusing to write checkpoint {folder}: {bad} is not finite; the previous one is kept")
    try:  # a Ctrl-C meanwhile is raised once the generation is written: the resume line is then true
        with interrupts_deferred(), atomic_folder(folder, previous=previous(folder)) as tmp:  # the last becomes .prev
            torch.save(state, tmp / STATE)
            (tmp / META).write_text(json.dumps(meta, indent=2))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:120]
        raise CheckpointError(f"could not write checkpoint {folder}: {reason}; the previous one is kept") from e
    return folder


def _load_one(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not (folder / META).exists() or not (folder / STATE).exists():
        raise CheckpointError(f"checkpoint {folder} is incomplete (needs {STATE} and {META})")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {folder / META} is corrupted ({e.msg})") from e
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {folder / STATE} holds objects other than tensors; refusing to load it") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder / STATE} is corrupted or truncated ({str(e).splitlines()[0][:120]})") from e
    return state, meta


def previous(folder: Path) -> Path:
    return folder.parent / f"{folder.name}.prev"


def exists(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.exists() or previous(folder).exists()


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of `folder`; if it is missing, incomplete or corrupted, of `folder.prev`
    (with a warning naming what was wrong). Raises CheckpointError when neither loads."""
    folder = Path(folder)
    prev = previous(folder)
    if not folder.exists() and not prev.exists():
        raise CheckpointError(f"no checkpoint at {folder}")
    try:
        if not folder.exists():
            raise CheckpointError(f"checkpoint {folder} is missing (a crash between two renames)")
        return _load_one(folder)
    except CheckpointError as e:
        if not prev.exists():
            raise
        state, meta = _load_one(prev)
        log.warning(f"{e}; falling back to the previous checkpoint {prev} (epoch {meta.get('epoch')})")
        return state, meta
