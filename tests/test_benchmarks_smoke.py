"""The benchmarks cannot rot: their smoke suite (benchmarks/smoke.py) runs every suite's main entry
on a tiny input, and every committed results JSON names the commit it measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHA = re.compile(r"^[0-9a-f]{40}$")
# results JSON the smoke suite writes -> the key holding its rows
EXPECTED = {"quality-smoke": "runs", "step-profile": "rows", "validation-cost": "rows", "scale": "runs",
            "serving": "rows", "import-scale": "rows"}


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def test_smoke_suite_writes_every_results_json(tmp_path: Path) -> None:
    report = ROOT / "benchmarks" / "RESULTS.md"
    before = (_tree(ROOT / "benchmarks" / "results"), report.stat().st_mtime)
    env = {k: v for k, v in os.environ.items() if k != "SLIFMR_BENCH_RESULTS"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.smoke", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    for name, key in EXPECTED.items():
        doc = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        assert doc[key], f"{name}.json has no {key}"
        assert SHA.match(doc["commit"]), f"{name}.json: commit {doc['commit']!r}"
        assert doc["command"].startswith("python -m benchmarks."), doc["command"]
        assert isinstance(doc["machine"], dict) and doc["machine"]["cpus"]
        assert "dirty" in doc and "written" in doc
    blocks = (tmp_path / "results" / "RESULTS.md").read_text()
    assert "<!-- QUALITY_SMOKE START -->" in blocks and "<!-- SCALE END -->" in blocks
    # the smoke wrote nothing under benchmarks/: results and the report as they were
    assert (_tree(ROOT / "benchmarks" / "results"), report.stat().st_mtime) == before


def test_every_committed_results_json_has_its_commit() -> None:
    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    missing = [p.name for p in files if not json.loads(p.read_text()).get("commit")]
    assert not missing, f"results JSONs without a commit: {missing}"
