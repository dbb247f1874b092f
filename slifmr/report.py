"""Learning curves and comparison tables of finished runs (`slifmr report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slifmr.atomic import atomic_path
from slifmr.errors import SlifmrError


def read_run(run_dir: Path) -> dict[str, Any]:
    """{'name', 'records' (metrics.jsonl lines), 'results' (results.json or None)}."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise SlifmrError(f"{run_dir} is not a run folder (no metrics.jsonl)")
    records = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SlifmrError(f"{metrics}, line {n}: not valid JSON") from None
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    return {"name": run_dir.name, "records": records, "results": results}


def comparison_table(runs: list[dict[str, Any]], ks: tuple[int, ...] = (10, 20)) -> str:
    """A Markdown table: best epoch, validation and test Recall/NDCG, seconds per epoch."""
    head = ["run", "variant", "best epoch"] + [f"valid R@{ks[-1]}"] + [f"test {m}@{k}" for k in ks for m in ("R", "N")] + ["s/epoch"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        r = run["results"]
        if r is None:
            best = max(run["records"], key=lambda x: x["valid"][f"recall@{ks[-1]}"], default=None)
            cells = [run["name"], "?", str(best["epoch"]) if best else "-", f"{best['valid'][f'recall@{ks[-1]}']:.4f}" if best else "-"]
            cells += ["(unfinished)"] * (2 * len(ks)) + ["-"]
        else:
            cells = [run["name"], r["variant"], str(r["best_epoch"]), f"{r['valid'][f'recall@{ks[-1]}']:.4f}"]
            cells += [f"{r['test'][f'{m}@{k}']:.4f}" for k in ks for m in ("recall", "ndcg")]
            cells.append(f"{r['seconds_per_epoch']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_curves(runs: list[dict[str, Any]], out: Path, metric: str = "recall@20") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        epochs = [r["epoch"] for r in run["records"]]
        ax_m.plot(epochs, [r["valid"][metric] for r in run["records"]], label=run["name"])
        ax_l.plot(epochs, [r["loss"]["loss"] for r in run["records"]], label=run["name"])
    ax_m.set(xlabel="epoch", ylabel=f"validation {metric}", title="validation")
    ax_l.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_m.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def report(run_dirs: list[Path], out_dir: Path) -> tuple[Path, Path]:
    runs = [read_run(Path(d)) for d in run_dirs]
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_curves(runs, out_dir / "curves.png")
    table = out_dir / "table.md"
    table.write_text(comparison_table(runs) + "\n")
    return png, table
