"""The sweeps of issue 6 on ml-100k, and the tuned configs re-run under the full protocol.

    slifmr tune tune_configs/fusion.yaml --storage benchmarks/runs/tune    # tuned slifmr
    slifmr tune tune_configs/static.yaml --storage benchmarks/runs/tune    # tuned static, same budget
    python -m benchmarks.quality.tune --sweeps benchmarks/runs/tune/fusion benchmarks/runs/tune/static --seeds 0 1 2

Reads each sweep folder (sweep.json: time, trials, how many ASHA stopped; best.json: the chosen
trial's validation and its one test evaluation; best.yaml), re-trains every best.yaml with each
seed (200 epochs, patience 20, in-process, 1 thread per run, 2 runs at a time), and compares the
test metrics with the default slifmr of benchmarks/results/quality.json (same protocol, 3 seeds).
Writes benchmarks/results/tune.json, tune.png and the TUNE block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.lib import results
from benchmarks.lib.runs import plot


def run_one(config: str, seed: int, run_dir: str) -> dict[str, Any]:
    from slifmr import log
    from slifmr.config import load_config
    from slifmr.training import train_loop

    log.setup(level=30, progress=False)
    cfg = load_config(config, overrides=[f"train.seed={seed}", "train.threads=1"])
    return train_loop(cfg, run_dir)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", nargs="+", required=True, help="finished sweep folders")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--runs", default=str(results.RUNS / "tuned"))
    ap.add_argument("--defaults", default="quality", help="the results JSON (name in results/) of the default "
                    "slifmr under the same protocol")
    args = ap.parse_args()

    sweeps = {}
    for folder in map(Path, args.sweeps):
        summary = json.loads((folder / "sweep.json").read_text())
        best = json.loads((folder / "best.json").read_text())
        variant = yaml.safe_load((folder / "best.yaml").read_text())["variant"]
        sweeps[folder.name] = {"folder": str(folder), "variant": variant, "summary": summary, "best": best}
    jobs = [(name, seed) for name in sweeps for seed in args.seeds]
    with ProcessPoolExecutor(args.parallel) as pool:
        futures = {job: pool.submit(run_one, str(Path(sweeps[job[0]]["folder"]) / "best.yaml"), job[1],
                                    str(Path(args.runs) / f"{job[0]}-seed{job[1]}")) for job in jobs}
        reruns = {job: f.result() for job, f in futures.items()}
    for (name, seed), r in reruns.items():
        print(f"{name} seed {seed}: test recall@20 {r['test']['recall@20']:.4f} (best epoch {r['best_epoch']})", flush=True)

    default = results.read_results(args.defaults)
    rows = {"slifmr (defaults)": {m: tuple(default["summary"]["slifmr"][m]) for m in ("recall@20", "ndcg@20")}}
    for name, sweep in sweeps.items():
        rs = [reruns[(name, s)] for s in args.seeds]
        rows[f"{sweep['variant']} (tuned: {name}.yaml)"] = {m: mean_std([r["test"][m] for r in rs]) for m in ("recall@20", "ndcg@20")}
        sweep["reruns"] = [{"seed": r["seed"], "best_epoch": r["best_epoch"], "valid": r["valid"], "test": r["test"]} for r in rs]

    command = results.this_command()
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    results.write_results("tune", {"sweeps": sweeps,
                                   "comparison": {k: {m: list(v) for m, v in r.items()} for k, r in rows.items()},
                                   "default_source": f"benchmarks/results/{args.defaults}.json"})
    plot(rows, "tune", title="ml-100k: defaults vs tuned (mean ± std over seeds)", bottom=0.85, fontsize=8)
    sweep_lines = ["| sweep | trials | stopped early by ASHA | errored | wall time | best trial: valid Recall@20 | its test Recall@20 (one evaluation) |",
                   "|---|---|---|---|---|---|---|"]
    for name, s in sweeps.items():
        sm, b = s["summary"], s["best"]
        sweep_lines.append(f"| {name}.yaml ({s['variant']}) | {sm['trials']} | {sm['stopped_by_asha']} | {sm['errored']} | "
                           f"{sm['seconds'] / 60:.1f} min | {b['valid']['recall@20']:.4f} | {b['test']['recall@20']:.4f} |")
    cmp_lines = ["| config | test Recall@20 | test NDCG@20 |", "|---|---|---|"]
    for k, r in rows.items():
        cmp_lines.append(f"| {k} | {r['recall@20'][0]:.4f} ± {r['recall@20'][1]:.4f} | {r['ndcg@20'][0]:.4f} ± {r['ndcg@20'][1]:.4f} |")
    body = (f"### Ray Tune sweeps (issue 6)\n\nSweeps: `slifmr tune tune_configs/<name>.yaml --storage benchmarks/runs/tune` "
            f"(16 trials, random search, ASHA grace 6 / max_t 50 / reduction factor 3, 2 trials at once, each in-process "
            f"with 1 thread). Re-runs: `{command}`. Machine: {machine}.\n\n" + "\n".join(sweep_lines)
            + "\n\nBest configs re-trained under the full protocol (200 epochs, patience 20), mean ± std over seeds "
            + ", ".join(map(str, args.seeds)) + "; the defaults row is "
            f"benchmarks/results/{args.defaults}.json (same protocol):\n\n"
            + "\n".join(cmp_lines) + "\n\n![tune](results/tune.png)\n")
    results.write_section("TUNE", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
