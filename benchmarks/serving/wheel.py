"""The wheel, measured (issue 17, part 6): build it, install it in fresh venvs (torch first) with and
without the heavy extras, and train on the embedded data from the plain install.

    python -m benchmarks.serving.wheel

For each install: the seconds `pip install <wheel>[extras]` takes after torch==2.13.0 is in the
venv, and the size that install adds to site-packages (torch excluded: every install has it).
Then `slifmr train --epochs 1` runs from the plain install's venv. Writes
benchmarks/results/wheel.json and the WHEEL block of RESULTS.md. Needs the network (the package
index) and a few GB under /tmp.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.lib import results

ROOT = results.ROOT
INSTALLS = {"plain": "", "deepspeed": "[deepspeed]", "faiss": "[faiss]", "text": "[text]", "all": "[all]"}


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    work = Path("/tmp/slifmr-wheel")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(ROOT)])
    wheel = next((work / "dist").glob("slifmr-*.whl"))
    rows = []
    for name, extras in INSTALLS.items():
        venv = work / f"venv-{name}"
        run([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        run(pip + ["torch==2.13.0"])
        site = next((venv / "lib").glob("python*/site-packages"))
        before = size(site)
        start = time.perf_counter()
        run(pip + [f"{wheel}{extras}"])
        rows.append({"mode": "pip install", "install": name, "extras": extras or "none", "workers": 1,
                     "threads": os.cpu_count(), "seconds": time.perf_counter() - start,
                     "added_bytes": size(site) - before})
        print(rows[-1], flush=True)
        if name != "plain":
            shutil.rmtree(venv, ignore_errors=True)
    plain = work / "venv-plain"
    trained = run([str(plain / "bin" / "slifmr"), "-q", "train", "--epochs", "1", "--out", str(work / "run")],
                  cwd=work, env={**os.environ, "PATH": f"{plain / 'bin'}:{os.environ['PATH']}"})
    ok = (work / "run" / "results.json").exists()
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores; pip from this machine's package index"
    mb = 1 << 20
    lines = ["### The wheel and its extras (issue 17)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. `python -m build --wheel`, then per install a fresh venv with torch==2.13.0 "
             "first; seconds and MB are what `pip install <wheel>[extras]` adds.", "",
             "| install | extras | seconds | MB added |", "|---|---|---|---|"]
    lines += [f"| {r['install']} | {r['extras']} | {r['seconds']:.0f} | {r['added_bytes'] / mb:,.0f} |" for r in rows]
    lines += ["", f"`slifmr train --epochs 1` from the plain install: {'ran, results.json written' if ok else 'FAILED'}"
              f" ({trained.stdout.count(chr(10))} lines of output)."]
    results.publish("WHEEL", "wheel", {"rows": rows, "plain_install_trains": ok}, lines, note=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
