"""Tables and plots of evaluation results (Markdown for people and MLflow, PNG bar plots).

``results`` maps a model name to its metrics: either one value per metric (one run) or a list of values per
metric (several seeds), shown as mean ± std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mufasa.data.io import save_figure

TABLE_METRICS = ("hr@10", "ndcg@10", "mrr@10", "hr@50", "ndcg@50", "coverage@10")


def _cell(value) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value, dtype=float)
        return f"{arr.mean():.4f} ± {arr.std(ddof=1) if len(arr) > 1 else 0.0:.4f}"
    return f"{float(value):.4f}"


def metrics_table(results: dict[str, dict], metrics: tuple[str, ...] = TABLE_METRICS, title: str | None = None) -> str:
    """A Markdown table, one row per model, in the order given."""
    cols = [m for m in metrics if any(m in r for r in results.values())]
    lines = []
    if title:
        lines += [f"**{title}**", ""]
    lines.append("| model | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r[m]) if m in r else "–" for m in cols) + " |")
    return "\n".join(lines) + "\n"


def bar_plot(results: dict[str, dict], path: Path, metric: str = "ndcg@10") -> Path:
    """Bar plot of ``metric`` per model (error bars = std over seeds where there are several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if metric in r]
    values = [np.asarray(results[n][metric], dtype=float) for n in names]
    means = [v.mean() for v in values]
    errs = [v.std(ddof=1) if v.size > 1 else 0.0 for v in values]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
    ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="#4477aa")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"Test {metric} (full ranking, leave-one-out)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)
