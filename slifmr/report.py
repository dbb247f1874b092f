"""Learning curves and comparison tables of finished runs (`slifmr report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slifmr.atomic import atomic_path
from slifmr.errors import SlifmrError
from slifmr.run_layout import RunLayout


def read_run(run_dir: Path) -> dict[str, Any]:
    """{'name', 'records' (metrics.jsonl lines), 'results' (results.json or None), 'metric' (the
    run's train.stop_metric from its config.yaml; recall@K at its largest K without one)}."""
    layout = RunLayout(run_dir)
    metrics = layout.metrics
    if not metrics.exists():
        raise SlifmrError(f"{run_dir} is not a run folder (no metrics.jsonl)")
    records = []
    for n, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SlifmrError(f"{metrics}, line {n}: not valid JSON") from None
    results_path = layout.results
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    return {"name": run_dir.name, "records": records, "results": results, "metric": _stop_metric(run_dir, records)}


def _stop_metric(run_dir: Path, records: list[dict[str, Any]]) -> str:
    config = RunLayout(run_dir).config
    if config.exists():
        import yaml

        metric = ((yaml.safe_load(config.read_text()) or {}).get("train") or {}).get("stop_metric")
        if metric:
            return str(metric)
    ks = run_ks(records)
    return f"recall@{ks[-1] if ks else 20}"


def run_ks(records: list[dict[str, Any]]) -> list[int]:
    """The cut-offs K at which a run's records hold recall@K (its train.topk), ascending."""
    names = records[0]["valid"] if records else {}
    return sorted(int(k.partition("@")[2]) for k in names if k.startswith("recall@"))


def comparison_table(runs: list[dict[str, Any]]) -> str:
    """A Markdown table: best epoch, validation (each run's stop metric) and test Recall/NDCG at
    every K any run has ('-' where a run lacks it), seconds per epoch."""
    ks = sorted({k for run in runs for k in run_ks(run["records"])})
    head = ["run", "variant", "best epoch", "valid (stop metric)"] + [f"test {m}@{k}" for k in ks for m in ("R", "N")]
    rows = ["| " + " | ".join(head + ["s/epoch"]) + " |", "|" + "---|" * (len(head) + 1)]
    for run in runs:
        r, metric = run["results"], run["metric"]
        if r is None:
            best = max(run["records"], key=lambda x: x["valid"].get(metric, float("-inf")), default=None)
            cells = [run["name"], "?", str(best["epoch"]) if best else "-",
                     f"{metric} {best['valid'][metric]:.4f}" if best and metric in best["valid"] else "-"]
            cells += ["(unfinished)"] * (2 * len(ks)) + ["-"]
        else:
            test = r["test"] or {}
            cells = [run["name"], r["variant"], str(r["best_epoch"]), f"{metric} {r['valid'][metric]:.4f}"]
            cells += [f"{test[f'{m}@{k}']:.4f}" if f"{m}@{k}" in test else "-" for k in ks for m in ("recall", "ndcg")]
            cells.append(f"{r['seconds_per_epoch']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_curves(runs: list[dict[str, Any]], out: Path) -> Path:
    """Each run's validation curve of its own stop metric, and its training loss, per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    metrics = sorted({run["metric"] for run in runs})
    for run in runs:
        epochs = [r["epoch"] for r in run["records"]]
        label = run["name"] if len(metrics) == 1 else f"{run['name']} ({run['metric']})"
        ax_m.plot(epochs, [r["valid"].get(run["metric"], float("nan")) for r in run["records"]], label=label)
        ax_l.plot(epochs, [r["loss"]["loss"] for r in run["records"]], label=run["name"])
    ax_m.set(xlabel="epoch", ylabel=f"validation {' / '.join(metrics)}", title="validation")
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
