"""The results library: what every benchmark writes, and where.

A benchmark's outputs are a results JSON (`write_results`), optionally a PNG (`save_figure`) and
a block of benchmarks/RESULTS.md (`write_section`); `publish` does the JSON and the block at once.
Every results JSON starts with the same metadata keys, then the benchmark's own keys (its rows):

    command   the command as typed, e.g. "python -m benchmarks.quality.quality --seeds 0 1 2"
    machine   {"platform", "python", "cpus", "memory_gib", "torch", "gpu", "note"}: note is the
              benchmark's own words on the set-up (threads, runs in parallel, ...)
    commit    `git rev-parse HEAD` of the checkout measured (null outside a git checkout)
    dirty     true when that checkout had changes (tracked or untracked) when it was measured
    written   when the file was written, UTC, ISO 8601

Output folder: benchmarks/results/, or the folder named by the environment variable
SLIFMR_BENCH_RESULTS (the smoke suite writes there: nothing under benchmarks/ is touched). The
RESULTS.md blocks follow it: with the variable set they go to RESULTS.md inside that folder.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1]  # benchmarks/
ROOT = BENCH.parent  # the checkout
RUNS = BENCH / "runs"  # run folders (ignored by git)
RESULTS_ENV = "SLIFMR_BENCH_RESULTS"
META = ("command", "machine", "commit", "dirty", "written")


def results_dir() -> Path:
    """Where results JSONs and PNGs go: $SLIFMR_BENCH_RESULTS, else benchmarks/results."""
    override = os.environ.get(RESULTS_ENV)
    return Path(override) if override else BENCH / "results"


def report_path() -> Path:
    """The RESULTS.md whose blocks the benchmarks replace (inside the override folder if set)."""
    return results_dir() / "RESULTS.md" if os.environ.get(RESULTS_ENV) else BENCH / "RESULTS.md"


def results_path(name: str, suffix: str = ".json") -> Path:
    return results_dir() / f"{name}{suffix}"


def this_command(drop: tuple[str, ...] = ()) -> str:
    """The command line as typed: `python -m PACKAGE.MODULE ARGS` (or `python FILE ARGS`),
    without the arguments in `drop`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["-m", spec.name.removesuffix(".__main__")] if spec is not None and spec.name else [os.path.relpath(sys.argv[0])]
    return "python " + shlex.join([*head, *(a for a in sys.argv[1:] if a not in drop)])


def machine(note: str | None = None) -> dict[str, Any]:
    """This machine: platform, CPUs, memory, torch and its GPU; `note`: the benchmark's set-up."""
    try:
        import torch

        torch_version: str | None = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_version, gpu = None, None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "memory_gib": memory, "torch": torch_version, "gpu": gpu, "note": note}


def commit(root: Path = ROOT) -> dict[str, Any]:
    """{"commit": HEAD of the checkout at `root` (None outside git), "dirty": whether it has changes}."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if head else None
    return {"commit": head, "dirty": bool(status)}


def metadata(note: str | None = None, command: str | None = None, measured: dict[str, Any] | None = None,
             machine_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keys every results JSON starts with; `measured`: a `commit()` taken when the
    measurement started (default: now); `machine_info`: the machine that measured, when it is
    not this one (default: `machine(note)`)."""
    return {"command": command or this_command(), "machine": machine_info or machine(note), **(measured or commit()),
            "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_results(name: str, payload: dict[str, Any], *, note: str | None = None, command: str | None = None,
                  measured: dict[str, Any] | None = None, machine_info: dict[str, Any] | None = None,
                  path: Path | None = None) -> Path:
    """results/NAME.json (atomically): the metadata keys (`metadata`), then `payload` (the
    benchmark's rows and whatever else it reports, in the shape its readers expect). `payload`
    must not hold the metadata keys; `path` overrides where it goes."""
    clash = [k for k in META if k in payload]
    if clash:
        raise ValueError(f"the payload holds metadata keys {clash}: pass note=/command=/measured= instead")
    out = path or results_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {**metadata(note, command, measured, machine_info), **payload}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)
    return out


def read_results(name: str) -> dict[str, Any]:
    """results/NAME.json as written (in the output folder in use)."""
    return json.loads(results_path(name).read_text())


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, name: str | Path, dpi: int = 120) -> Path:
    """`fig` as results/NAME.png (or at the path given), atomically, then closed."""
    out = name if isinstance(name, Path) else results_path(name, ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    tmp.replace(out)
    return out


def write_section(section: str, body: str) -> bool:
    """Replace the block between `<!-- SECTION START -->` and `<!-- SECTION END -->` of RESULTS.md
    with `body`. A block not there yet is appended at the end (move it under its question's
    heading); returns whether it replaced one in place. Blocks use level-3 headings (`###`):
    the report's level-2 headings are its questions."""
    path = report_path()
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = f"<!-- {section} START -->", f"<!-- {section} END -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    found = start in text and end in text
    if found:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
        print(f"{path}: no block {section} yet; appended at the end (move it under its question's heading)",
              file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return found


def publish(section: str, name: str, payload: dict[str, Any], lines: list[str], *, note: str | None = None,
            command: str | None = None, measured: dict[str, Any] | None = None) -> Path:
    """A benchmark's outputs at once: results/NAME.json, the SECTION block of RESULTS.md, stdout."""
    out = write_results(name, payload, note=note, command=command, measured=measured)
    write_section(section, "\n".join(lines))
    print("\n".join(lines))
    return out
