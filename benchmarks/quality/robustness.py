"""The paper's robustness claim, measured: slifmr against the frozen-graph `static` on ml-100k
with its TRAINING information corrupted (validation and test untouched).

    python -m benchmarks.quality.robustness --seeds 0 1 2 --parallel 2 --reuse-clean

Conditions: clean; 10% and 20% fake training interactions; 10% and 20% of KG triples rewired
to random tails; Gaussian noise of 1 std on every modality feature (slifmr.data.corrupt, with
corruption seed 0). Each (condition, variant, seed) trains under the full protocol (200 epochs,
patience 20, in-process, 1 thread per run); a run whose results.json exists under --runs is
read instead of trained again, so an interrupted study continues. `--reuse-clean` takes the clean runs from
benchmarks/results/quality.json (same protocol and code path) instead of training them again.
Writes benchmarks/results/robustness[-TAG].json, its PNG and the ROBUSTNESS[_TAG] block of RESULTS.md:
test Recall@20 per condition and variant, and its relative drop against clean.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.lib import results

CONDITIONS = {
    "clean": None,
    "fake interactions 10%": ("add_fake_interactions", 0.1),
    "fake interactions 20%": ("add_fake_interactions", 0.2),
    "KG rewired 10%": ("rewire_kg", 0.1),
    "KG rewired 20%": ("rewire_kg", 0.2),
    "feature noise 1 std": ("noisy_features", 1.0),
}


def corrupted_dataset(condition: str, root: Path) -> str:
    from slifmr.data import corrupt
    from slifmr.data.format import read_dataset, write_dataset
    from slifmr.data.ml100k import prepare_ml100k

    clean = prepare_ml100k()
    if CONDITIONS[condition] is None:
        return str(clean)
    out = root / condition.replace(" ", "_").replace("%", "pct")
    if not (out / "meta.json").exists():
        fn, amount = CONDITIONS[condition]
        write_dataset(getattr(corrupt, fn)(read_dataset(clean), amount, 0), out, overwrite=True)
    return str(out)


def run_one(condition: str, data: str, variant: str, seed: int, run_root: str) -> dict[str, Any]:
    from slifmr import log
    from slifmr.config import load_config
    from slifmr.training import train_loop

    log.setup(level=30, progress=False)
    cfg = load_config(variant=variant, overrides=[f"train.seed={seed}", "train.threads=1"])
    cfg.data = data
    run_dir = Path(run_root) / f"{condition.replace(' ', '_').replace('%', 'pct')}-{variant}-seed{seed}"
    done = run_dir / "results.json"
    # A finished run (its results.json is written last, atomically) is read, not trained again.
    r = json.loads(done.read_text()) if done.exists() else train_loop(cfg, run_dir)
    return {"condition": condition, "variant": variant, "seed": seed, "best_epoch": r["best_epoch"],
            "valid": r["valid"], "test": r["test"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["static", "slifmr"])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS))
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--reuse-clean", action="store_true", help="clean runs from --clean-from")
    ap.add_argument("--clean-from", default=str(results.results_path("quality")),
                    help="a benchmarks.quality.quality results JSON whose runs are the clean condition (with --reuse-clean)")
    ap.add_argument("--tag", default="", help="suffix of the outputs: results/robustness-TAG.json, its PNG, the "
                    "ROBUSTNESS_TAG block of RESULTS.md")
    ap.add_argument("--runs", default=str(results.RUNS / "robustness"))
    args = ap.parse_args()
    bad = [c for c in args.conditions if c not in CONDITIONS]
    if bad:
        sys.exit(f"error: unknown condition {bad[0]!r} (known: {', '.join(CONDITIONS)})")

    runs: list[dict[str, Any]] = []
    if args.reuse_clean and "clean" in args.conditions:
        quality = json.loads(Path(args.clean_from).read_text())
        runs += [{"condition": "clean", "variant": r["variant"], "seed": r["seed"], "best_epoch": r["best_epoch"],
                  "valid": r["valid"], "test": r["test"], "source": os.path.relpath(args.clean_from, results.BENCH)}
                 for r in quality["runs"] if r["variant"] in args.variants and r["seed"] in args.seeds]
    todo = [c for c in args.conditions if not (c == "clean" and args.reuse_clean)]
    data = {c: corrupted_dataset(c, Path(args.runs) / "data") for c in todo}
    jobs = [(c, v, s) for c in todo for s in args.seeds for v in args.variants]
    with ProcessPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_one, c, data[c], v, s, args.runs) for c, v, s in jobs]
        for f in futures:
            runs.append(f.result())
            r = runs[-1]
            print(f"{r['condition']} {r['variant']} seed {r['seed']}: test recall@20 {r['test']['recall@20']:.4f}", flush=True)

    table: dict[str, dict[str, Any]] = {}
    for c in args.conditions:
        for v in args.variants:
            vals = [r["test"]["recall@20"] for r in runs if r["condition"] == c and r["variant"] == v]
            if vals:
                table.setdefault(c, {})[v] = {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                              "seeds": len(vals)}
    for row in table.values():
        for v, cell in row.items():
            clean = table.get("clean", {}).get(v)
            cell["relative_drop"] = (clean["mean"] - cell["mean"]) / clean["mean"] if clean else None

    command = results.this_command()
    note = f"1 torch thread per run, {args.parallel} runs in parallel"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {note}"
    name = "robustness" + (f"-{args.tag}" if args.tag else "")
    results.write_results(name, {"runs": runs, "table": table}, note=note)
    plot(table, args.variants, name)
    lines = ["| condition | " + " | ".join(f"{v} test Recall@20 | {v} drop" for v in args.variants) + " |",
             "|---|" + "---|---|" * len(args.variants)]
    for c, row in table.items():
        cells = []
        for v in args.variants:
            cell = row.get(v)
            cells += ["", ""] if cell is None else [f"{cell['mean']:.4f} ± {cell['std']:.4f}",
                                                    "" if cell["relative_drop"] is None else f"{cell['relative_drop']:+.1%}"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    body = (f"### Robustness to corrupted training data{' (' + args.tag + ')' if args.tag else ''}\n\nCommand: `{command}`  \nMachine: {machine}. "
            "ml-100k, full protocol, mean ± std over seeds " + ", ".join(map(str, args.seeds))
            + "; drop = relative fall of test Recall@20 against the clean dataset (positive: worse).\n\n"
            + "\n".join(lines) + f"\n\n![robustness](results/{name}.png)\n")
    results.write_section("ROBUSTNESS" + (f"_{args.tag.upper()}" if args.tag else ""), body)
    print(body)
    return 0


def plot(table: dict[str, dict[str, Any]], variants: list[str], name: str) -> None:
    import numpy as np

    plt = results.pyplot()
    conds = [c for c in table if c != "clean"]
    x = np.arange(len(conds))
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, v in enumerate(variants):
        drops = [100 * (table[c].get(v, {}).get("relative_drop") or 0.0) for c in conds]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, drops, width, label=v)
    ax.set_xticks(x, conds, fontsize=8)
    ax.set_ylabel("relative drop of test Recall@20 (%)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title("ml-100k: corrupted training data (lower is more robust)")
    ax.legend()
    fig.tight_layout()
    results.save_figure(fig, name, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
