"""Where `slifmr data import table` spends its time and memory: the command runs in this process
while a thread samples the main thread's stack and the resident memory every 50 ms.

    python -m benchmarks.data.import_profile /tmp/slifmr-import-scale/interactions-100000000.parquet

(the inputs benchmarks.data.import_scale writes). Prints only: nothing goes to benchmarks/results. Prints, per slifmr source line (with its two callers),
the seconds spent there and the peak resident memory seen there, largest first. The imported
dataset goes to a temporary folder and is removed.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
import traceback

import psutil


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="interactions table (Parquet or CSV with user_id, item_id, rating)")
    ap.add_argument("--top", type=int, default=25, help="lines to print")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    args = ap.parse_args()
    from slifmr.cli import main as slifmr_main

    process, main_thread = psutil.Process(), threading.get_ident()
    samples: list[tuple[float, int, str]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            frames = traceback.extract_stack(sys._current_frames()[main_thread])
            where = [f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames if "slifmr" in f.filename][-3:]
            samples.append((time.perf_counter(), process.memory_info().rss, " < ".join(reversed(where))))
            time.sleep(args.interval)

    sampler = threading.Thread(target=sample, daemon=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        sampler.start()
        code = slifmr_main(["-q", "data", "import", "table", args.source, "--threshold", "rating=3", "--out", f"{tmp}/d"])
        done.set()
        sampler.join()
        total = time.perf_counter() - start
    spent: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for (t, rss, where), (t_next, _, _) in zip(samples, samples[1:]):
        spent[where][0] += t_next - t
        spent[where][1] = max(spent[where][1], rss)
    gib = 1 << 30
    print(f"exit {code}: {total:.1f} s under the sampler, peak resident {max(s[1] for s in samples) / gib:.2f} GiB")
    for where, (seconds, peak) in sorted(spent.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{seconds:6.2f} s {peak / gib:5.2f} GiB  {where or '(outside slifmr)'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
