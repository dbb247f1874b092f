"""Wall time of the small commands a user types most, as a fresh process each (what a shell pays):
`slifmr --help`, `slifmr data info`, `slifmr recommend --users` and `slifmr evaluate` on a trained
ml-100k run, each with the run's saved ranking (RUN/ranking, what training leaves) and without it
(the best epoch's graphs rebuilt, as runs saved before it are served), side by side in one run.

    python -m benchmarks.serving.command_latency --repeats 5

Trains a 3-epoch slifmr run on the embedded ml-100k under --work first (reused when present).
Writes benchmarks/results/command-latency.json and the COMMAND_LATENCY block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.lib import results

BIN = Path(sys.executable).parent


def wall(cmd: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", default="benchmarks/runs/command_latency")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    slifmr = str(BIN / "slifmr")
    run = work / "ml100k-slifmr"
    if not (run / "results.json").exists():
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run([slifmr, "-q", "train", "--out", str(run), "--epochs", "3"], check=True, env=env)
    from slifmr.data.ml100k import prepare_ml100k

    data = str(prepare_ml100k())
    commands = {
        "slifmr --help": [slifmr, "--help"],
        "slifmr data info ml-100k": [slifmr, "data", "info", data],
        "slifmr recommend RUN --users 196 --k 10": [slifmr, "-q", "recommend", str(run), "--users", "196", "--k", "10"],
        "slifmr evaluate RUN": [slifmr, "-q", "evaluate", str(run)],
    }
    rows = []
    for saved in (True, False):
        ranking, hidden = run / "ranking", run / ".ranking-hidden"
        if not saved:
            ranking.rename(hidden)
        try:
            for name, cmd in commands.items():
                if not saved and "RUN" not in name:
                    continue
                times = wall(cmd, args.repeats, env)
                row = {"command": name, "saved_ranking": saved if "RUN" in name else None, "repeats": args.repeats,
                       "median_seconds": statistics.median(times), "min_seconds": min(times), "threads": 1}
                rows.append(row)
                print(row, flush=True)
        finally:
            if hidden.exists():
                hidden.rename(ranking)
    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, nothing else running"
    lines = ["### Command latency (issue 30)", "", f"Command: `{command}`  ",
             f"Machine: {machine}. Each command a fresh process (`OMP_NUM_THREADS=1`), median of {args.repeats}; "
             "RUN is a 3-epoch slifmr run on the embedded ml-100k. 'saved ranking': RUN/ranking present (what "
             "training leaves since issue 30) or absent (the best epoch's graphs rebuilt and propagated, as for "
             "runs saved before it).", "",
             "| command | saved ranking | median s | min s |", "|---|---|---|---|"]
    lines += [f"| `{r['command']}` | {'-' if r['saved_ranking'] is None else 'yes' if r['saved_ranking'] else 'no'} | "
              f"{r['median_seconds']:.2f} | {r['min_seconds']:.2f} |" for r in rows]
    results.publish("COMMAND_LATENCY", "command-latency", {"rows": rows}, lines, note=machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
