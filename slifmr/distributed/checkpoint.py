"""Checkpoints: a folder holding state.pt (tensors and plain values only, loaded with
torch.load(weights_only=True), so a checkpoint cannot execute code) and meta.json.

Writes are atomic: the new folder is written beside the old one and swapped in by rename;
if a crash leaves only the previous folder (renamed to <name>.old), loading falls back to it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from slifmr.errors import SlifmrError

STATE, META = "state.pt", "meta.json"


class CheckpointError(SlifmrError):
    pass


def save_checkpoint(folder: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = folder.parent / f"{folder.name}.old"
    try:
        tmp.mkdir()
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if folder.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {folder}: {e.strerror or e}; the previous one is kept") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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


def load_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of `folder`, or of `folder.old` if the folder is missing after a crash."""
    folder = Path(folder)
    old = folder.parent / f"{folder.name}.old"
    if not folder.exists() and old.exists():
        folder = old
    if not folder.exists():
        raise CheckpointError(f"no checkpoint at {folder}")
    return _load_one(folder)
