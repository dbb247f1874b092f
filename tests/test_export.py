"""Export for serving (issue 17, part 1): the export answers exactly what `recommend` answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import slifmr
from slifmr.cli import main
from slifmr.errors import SlifmrError
from slifmr.export import load_export


@pytest.mark.parametrize("variant", ["slifmr", "lightgcn"])  # with the ridge head, and a plain dot product
def test_export_answers_the_runs_top_k(variant: str, tiny_path: Path, tmp_path: Path) -> None:
    run = slifmr.train(data=tiny_path, variant=variant, out=tmp_path / "run", epochs=2, embedding_dim=8, k_corr=3,
                       k_mm=3, ridge_k=5)
    assert main(["-q", "export", str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 0
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["index"]["kind"] == "IndexFlatIP" and manifest["index"]["recall@20"] == 1.0
    assert manifest["dataset"]["digest"] == run.dataset.fingerprint()["digest"] and manifest["best_epoch"] == run.best_epoch
    assert (manifest["score"]["ridge_weight"] > 0) == (variant == "slifmr")
    exported = load_export(tmp_path / "exp")
    expected = run.recommend([str(u) for u in range(12)], k=7).to_pydict()
    for u in range(12):
        got = exported.recommend(str(u), k=7)
        rows = [i for i, user in enumerate(expected["user"]) if user == str(u)]
        assert [item for item, _ in got] == [expected["item"][i] for i in rows]
        assert [s for _, s in got] == pytest.approx([expected["score"][i] for i in rows], abs=1e-3)
    batch = exported.recommend_batch(np.arange(12), k=7)
    assert list(batch["item"]) == expected["item"] and list(batch["user"]) == expected["user"]
    np.testing.assert_allclose(batch["score"], expected["score"], atol=1e-4)
    with pytest.raises(SlifmrError, match="already exists"):
        run.export(tmp_path / "exp")


def test_ease_exports_its_weights_without_an_index(tiny_path: Path, tmp_path: Path) -> None:
    """A closed form scored by item-item weights exports them (tests/test_serve.py: its lists)."""
    run = slifmr.train(data=tiny_path, variant="ease", out=tmp_path / "run")
    manifest = json.loads((run.export(tmp_path / "exp") / "manifest.json").read_text())
    assert manifest["score"]["type"] == "item_item" and manifest["index"] is None and manifest["dim"] == 0
    assert not (tmp_path / "exp" / "items.faiss").exists() and (tmp_path / "exp" / "ridge.parquet").exists()
