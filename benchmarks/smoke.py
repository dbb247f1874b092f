"""The smoke suite: each suite's main entry on a tiny input, so that the benchmarks cannot rot
(about a minute on 2 cores; tests/test_benchmarks_smoke.py runs it, and CI runs the tests).

    python -m benchmarks.smoke --out /tmp/smoke

Steps, each a fresh `python -m benchmarks....` process run from the checkout's root:
  quality   benchmarks.quality.quality: slifmr and ease, 1 epoch, seed 0, on a tiny synthetic set
  speed     benchmarks.speed.step_profile (1 step of lightgcn and slifmr on it) and
            benchmarks.speed.validation_cost (--out, then --compare: the old/new pattern)
  scale     benchmarks.scale.scale: history and BPR-MF, 2 steps each, on a 2,000-user graph, in-process
  serving   benchmarks.serving.export_scorer: the quality step's slifmr run exported and served
  data      benchmarks.data.import_scale: 5,000 rows imported by a fresh child process
  imports   every module of the package imported (the suites not run here too: faults.cluster
            needs root, serving.wheel and serving.first_command the network, the rest hours),
            and benchmarks/gpu_check.py --help run as a file, as the device tool runs it
Then the checks: each step's results JSON has its rows and the library's metadata (command,
machine, commit, dirty, written), and every committed benchmarks/results/*.json has a commit.

Everything is written under --out: results/ (SLIFMR_BENCH_RESULTS: the results library writes
there, RESULTS.md blocks included, never under benchmarks/), data/, runs/, work/ and logs/.
Exit status 0 when every step and check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.lib import results

# results JSON written by the smoke steps -> the key holding its rows
EXPECTED = {"quality-smoke": "runs", "step-profile": "rows", "validation-cost": "rows", "scale": "runs",
            "serving": "rows", "import-scale": "rows"}
SHA = re.compile(r"^[0-9a-f]{40}$")
IMPORT_ALL = ("import importlib, pkgutil, benchmarks\n"
              "names = [m.name for m in pkgutil.walk_packages(benchmarks.__path__, 'benchmarks.')]\n"
              "for name in names:\n    importlib.import_module(name)\n"
              "print(f'{len(names)} modules imported')")


def steps(out: Path) -> list[tuple[str, list[str]]]:
    """(name, command) of every step, in order (later steps read what earlier ones wrote)."""
    py = sys.executable
    tiny = str(out / "data" / "tiny")
    runs, work = out / "runs", out / "work"
    return [
        ("data synth", [py, "-m", "slifmr", "-q", "data", "synth", "--users", "300", "--items", "200",
                        "--interactions", "6000", "--entities", "300", "--triples", "1200", "--seed", "0",
                        "--out", tiny, "--overwrite"]),
        ("quality", [py, "-m", "benchmarks.quality.quality", "--data", tiny, "--variants", "slifmr", "ease",
                     "--seeds", "0", "--parallel", "1", "--threads", "1", "--set", "train.epochs=1",
                     "--runs", str(runs / "quality"), "--tag", "smoke"]),
        ("speed: step profile", [py, "-m", "benchmarks.speed.step_profile", "--variants", "lightgcn", "slifmr",
                                 "--steps", "1", "--data", tiny]),
        ("speed: validation cost, measure", [py, "-m", "benchmarks.speed.validation_cost", "--users", "256",
                                             "--items", "2000", "--repeat", "1", "--out", str(work / "validation.json")]),
        ("speed: validation cost, compare", [py, "-m", "benchmarks.speed.validation_cost", "--compare",
                                             str(work / "validation.json"), str(work / "validation.json"),
                                             "--old-label", "this checkout (smoke)"]),
        ("scale", [py, "-m", "benchmarks.scale.scale", "--users", "2000", "--modes", "history", "mf", "--workers", "0",
                   "--steps", "2", "--runs", str(runs / "scale"), "--grad-sync-sizes"]),
        ("serving", [py, "-m", "benchmarks.serving.export_scorer", "--run", str(runs / "quality" / "slifmr-seed0"),
                     "--users", "500", "--items", "1000", "--sample", "50", "--work", str(work / "serving")]),
        ("data", [py, "-m", "benchmarks.data.import_scale", "--rows", "5000", "--repeat", "1",
                  "--work", str(work / "import")]),
        ("imports", [py, "-c", IMPORT_ALL]),
        ("gpu_check as a file", [py, str(results.BENCH / "gpu_check.py"), "--help"]),
    ]


def check_results(folder: Path) -> list[str]:
    """What is wrong with the smoke's results JSONs in `folder` (empty: nothing)."""
    problems = []
    for name, key in EXPECTED.items():
        path = folder / f"{name}.json"
        if not path.exists():
            problems.append(f"{name}.json was not written")
            continue
        doc = json.loads(path.read_text())
        if not doc.get(key):
            problems.append(f"{name}.json has no {key}")
        if not SHA.match(str(doc.get("commit"))):
            problems.append(f"{name}.json: commit {doc.get('commit')!r} is not a git commit")
        if not str(doc.get("command", "")).startswith("python -m benchmarks."):
            problems.append(f"{name}.json: command {doc.get('command')!r}")
        if not isinstance(doc.get("machine"), dict) or "written" not in doc or "dirty" not in doc:
            problems.append(f"{name}.json lacks the metadata (machine, dirty, written)")
    return problems


def committed_without_commit(folder: Path | None = None) -> list[str]:
    """The results JSONs under benchmarks/results (or `folder`) without a `commit` key."""
    folder = folder or results.BENCH / "results"
    return sorted(p.name for p in folder.glob("*.json") if "commit" not in json.loads(p.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="where everything goes (default: a new temporary folder)")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="slifmr-smoke-"))).resolve()
    for folder in ("logs", "work"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, results.RESULTS_ENV: str(out / "results"), "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    report: list[dict[str, Any]] = []
    failed = []
    started = time.perf_counter()
    for i, (name, cmd) in enumerate(steps(out)):
        log = out / "logs" / f"{i:02d}-{name.split(':')[0].replace(' ', '-')}.log"
        t = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=results.ROOT, env=env, capture_output=True, text=True, timeout=600)
            code, text = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            code, text = -1, f"timed out after {e.timeout} s"
        log.write_text(f"$ {' '.join(cmd)}\n{text}")
        seconds = time.perf_counter() - t
        report.append({"step": name, "exit_status": code, "seconds": round(seconds, 1), "log": str(log)})
        print(f"{'ok  ' if code == 0 else 'FAIL'} {seconds:5.1f} s  {name}", flush=True)
        if code != 0:
            failed.append(name)
            print("\n".join("     | " + line for line in text.strip().splitlines()[-25:]), flush=True)
    problems = check_results(out / "results")
    problems += [f"benchmarks/results/{name} has no commit" for name in committed_without_commit()]
    for p in problems:
        print(f"FAIL check: {p}")
    (out / "smoke.json").write_text(json.dumps({"steps": report, "problems": problems,
                                                 "seconds": time.perf_counter() - started}, indent=2))
    print(f"{len(report) - len(failed)} of {len(report)} steps passed, {len(problems)} problems, "
          f"{time.perf_counter() - started:.0f} s; everything under {out}")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
