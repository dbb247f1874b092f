"""Would a global low-rank score add to slifmr on ml-100k? A trained run's fused score blended
with GF-CF's scores (Shen et al., CIKM 2021, eq. 10: the linear filter r_u P~ with
P~ = R~^T R~, R~ = D_U^-1/2 R D_I^-1/2, plus alpha times the ideal low-pass filter
r_u D_I^-1/2 V_k V_k^T D_I^1/2 over R~'s top-k right singular vectors), each standardised per
user over the N items; k, alpha and the blend weight (0 included) chosen on validation, never
test.

    python -m benchmarks.experiments.spectral_probe RUN [RUN ...]

Two blends: the ideal low-pass part alone, and GF-CF whole. Dense: a probe for ml-100k-sized
catalogues (an SVD of the M x N training matrix). Writes results/spectral-probe.json and prints
its table (mean and sd over the runs given). An archived probe (benchmarks/experiments/README.md
says what it found); it reads slifmr's private `_standardise`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import torch

RANKS = (16, 32, 64, 128)
ALPHAS = (0.1, 0.3, 1.0)
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)


def probe(run_dir: str) -> dict[str, dict[str, float]]:
    import slifmr
    from slifmr.data.format import TEST, VALID
    from slifmr.evaluation import Evaluator
    from slifmr.model.slifmr import _standardise

    run = slifmr.load_run(run_dir)
    reps, users = run.model, torch.arange(run.dataset.num_users)
    evaluator = Evaluator(run.dataset, [20], 2048)
    x = reps.interactions.to_dense().double()
    d_items = x.sum(0).clamp_min(1)
    r = x / x.sum(1).clamp_min(1).sqrt()[:, None] / d_items.sqrt()[None, :]
    _, _, vh = torch.linalg.svd(r, full_matrices=False)
    linear = x @ (r.T @ r)
    fused = reps.full_scores(users).double()  # the run's own blend, as it ranks test

    def recall(scores: torch.Tensor, split: int) -> float:
        return evaluator.evaluate(lambda u: scores[u].float(), split)["recall@20"]

    def ideal(k: int) -> torch.Tensor:
        v = vh[:k].T
        return x @ (v / d_items.sqrt()[:, None]) @ (v.T * d_items.sqrt()[None, :])

    out = {"slifmr (the run)": {"valid": recall(fused, VALID), "test": recall(fused, TEST)}}
    parts = {"+ ideal low-pass": {(k, None): ideal(k) for k in RANKS},
             "+ GF-CF (linear + alpha ideal)": {(k, a): linear + a * ideal(k) for k in RANKS for a in ALPHAS}}
    for name, options in parts.items():
        best = None
        for (k, a), score in options.items():
            part = _standardise(score.float()).double()
            for w in WEIGHTS:
                valid = recall(fused + w * part, VALID)
                if best is None or valid > best[0]:
                    best = (valid, k, a, w, part)
        valid, k, a, w, part = best
        out[name] = {"valid": valid, "test": recall(fused + w * part, TEST), "rank": k, "alpha": a, "weight": w}
    return out


def main() -> int:
    from benchmarks.lib import results

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="trained slifmr run folders")
    args = ap.parse_args()
    torch.set_num_threads(1)
    per_run = {r: probe(r) for r in args.runs}
    names = list(next(iter(per_run.values())))
    command = results.this_command()
    lines = ["### A global low-rank score blended with slifmr (GF-CF's filters), chosen on validation", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, one torch thread. Ranks {RANKS}, alphas "
             f"{ALPHAS}, blend weights {WEIGHTS}, chosen per run on validation; mean (sd) over the "
             f"{len(per_run)} runs.", "",
             "| score | valid Recall@20 | test Recall@20 | choices per run (rank, alpha, weight) |", "|---|---|---|---|"]
    for n in names:
        tests = [r[n]["test"] for r in per_run.values()]
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        choices = "; ".join(f"{r[n].get('rank')}, {r[n].get('alpha')}, {r[n].get('weight')}" for r in per_run.values()
                            ) if "rank" in next(iter(per_run.values()))[n] else ""
        lines.append(f"| {n} | {statistics.mean(r[n]['valid'] for r in per_run.values()):.4f} | "
                     f"{statistics.mean(tests):.4f} ± {sd:.4f} | {choices} |")
    results.write_results("spectral-probe", {"runs": per_run}, note="one torch thread")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
