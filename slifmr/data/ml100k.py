"""The embedded default dataset: MovieLens-100K with its Freebase KG, from the five atomic
files shipped inside the PyPI wheel of recbole 1.2.1 (fetched with pip, no dependencies,
sha256-pinned; recbole itself is never installed), plus a text modality from the titles,
years and genres embedded with all-MiniLM-L6-v2.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from slifmr import log
from slifmr.atomic import atomic_folder
from slifmr.data.format import Dataset, read_dataset, write_dataset
from slifmr.data.recbole import import_recbole
from slifmr.data.text import embed_sentences
from slifmr.errors import DataError, SlifmrError
from slifmr.runlock import exclusive

WHEEL = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBERS = [f"recbole/dataset_example/ml-100k/ml-100k.{ext}" for ext in ("inter", "item", "user", "kg", "link")]
SPLIT_SEED = 2026


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """--cache-dir, else $XDG_CACHE_HOME/slifmr, else ~/.cache/slifmr."""
    if cache_dir:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slifmr"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(wheel: Path, expected: str) -> None:
    """Raises DataError unless the file's sha256 is the pinned `expected`."""
    digest = sha256_of(wheel)
    if digest != expected:
        raise DataError(str(wheel), f"sha256 {digest} does not match the pinned {expected}; refusing to use it")


def extract_atomic_files(wheel: Path, dest: Path, expected_sha256: str = WHEEL_SHA256) -> Path:
    """Check the wheel's sha256, then extract the five ml-100k atomic files into dest (atomically)."""
    check_sha256(wheel, expected_sha256)
    with atomic_folder(dest) as tmp, zipfile.ZipFile(wheel) as zf:
        for member in MEMBERS:
            (tmp / Path(member).name).write_bytes(zf.read(member))
    return dest


def fetch_wheel(download_dir: Path, requirement: str = "recbole==1.2.1", name: str = WHEEL,
                purpose: str = "its ml-100k files; recbole is not installed") -> Path:
    """`pip download REQUIREMENT --no-deps` into download_dir (from PyPI, or pip's cache): the
    wheel file `name`. Raises SlifmrError when pip cannot fetch it."""
    wheel = download_dir / name
    if wheel.exists():
        return wheel
    download_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"fetching {name} with pip (for {purpose})")
    cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(download_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SlifmrError(f"could not download {name} with pip: {last}")
    return wheel


def item_sentences(ds: Dataset) -> list[str]:
    """'Title (year). Genres: a, b.' per item, in item-id order."""
    t = ds.items.to_pydict()
    out = [f"item {i}" for i in range(ds.num_items)]
    for i, title, year, genres in zip(t["item"], t["title"], t["year"], t["genres"]):
        text = title if year is None else f"{title} ({year})"
        out[i] = f"{text}. Genres: {', '.join(genres or [])}."
    return out


def prepare_ml100k(cache_dir: str | os.PathLike | None = None, text: bool = True, force: bool = False) -> Path:
    """Build (once) and return the ml-100k dataset folder in the cache."""
    return cached_dataset("ml-100k", lambda root, out: _build(root, out, text), cache_dir, force)


def cached_dataset(name: str, build: Callable[[Path, Path], Path], cache_dir: str | os.PathLike | None = None,
                   force: bool = False) -> Path:
    """CACHE/NAME, built by build(CACHE, CACHE/NAME) once (again with `force`). Two processes on
    a fresh cache (two `slifmr train` without --data, Tune trials): one builds it while the
    other waits, then finds it made. A cached folder must still validate."""
    root = cache_root(cache_dir)
    out = root / name
    if out.exists() and not force:
        read_dataset(out)
        return out
    with exclusive(root / f".{name}.lock"):
        if out.exists() and not force:
            read_dataset(out)
            return out
        return build(root, out)


def raw_ml100k(root: Path) -> Path:
    """The five ml-100k atomic files, extracted once into ROOT/raw/ml-100k."""
    raw = root / "raw" / "ml-100k"
    if not all((raw / Path(m).name).exists() for m in MEMBERS):
        raw.parent.mkdir(parents=True, exist_ok=True)
        extract_atomic_files(fetch_wheel(root / "wheels"), raw)
    return raw


def add_text(ds: Dataset, root: Path) -> None:
    """The text modality: 'title (year). Genres: ...' embedded with all-MiniLM-L6-v2 (cached)."""
    vectors = embed_sentences(item_sentences(ds), root / "embeddings")
    if vectors is not None:
        ds.features["text"] = vectors
        ds.provenance["text"] = "all-MiniLM-L6-v2 over 'title (year). Genres: ...'"


def _build(root: Path, out: Path, text: bool) -> Path:
    raw = raw_ml100k(root)
    ds = import_recbole(raw, "ml-100k", split_seed=SPLIT_SEED)
    ds.provenance.update({"source": f"{WHEEL} (sha256 {WHEEL_SHA256})", "files": [Path(m).name for m in MEMBERS]})
    if text:
        add_text(ds, root)
    write_dataset(ds, out, overwrite=True)
    return out


def default_dataset(cache_dir: str | os.PathLike | None = None) -> Path:
    return prepare_ml100k(cache_dir)



