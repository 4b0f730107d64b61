"""Plots of the learn tables, where a person would rather look than read: a calibration curve
per judge (outcome rate by score decile) and the drivers with their intervals (a forest plot).

Pure: each function returns a matplotlib ``Figure`` built without pyplot (no global state, safe
in a run's thread); tracking.log_table saves it as a PNG artifact of the run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from matplotlib.figure import Figure


def calibration_curves(deciles: Sequence[dict], metric_rate: str = "reply_rate", task_type: str = "all") -> Figure:
    """Per judge: the outcome rate of each score decile against the decile's mean score rank
    (1-10), so judges on different scales share one axis. A judge that predicts outcomes rises."""
    by_judge: dict[str, list[dict]] = defaultdict(list)
    for d in deciles:
        if d["task_type"] == task_type:
            by_judge[f"{d['judge']} ({d['criteria_version']})"].append(d)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for judge, rows in sorted(by_judge.items()):
        rows = sorted(rows, key=lambda d: d["decile"])
        ax.plot([d["decile"] for d in rows], [d[metric_rate] for d in rows], marker="o", label=judge)
    ax.set_xlabel("score decile (1 = lowest scores)")
    ax.set_ylabel(metric_rate.replace("_", " "))
    ax.set_title(f"Calibration by score decile, task type {task_type}")
    ax.set_xticks(range(1, 11))
    if by_judge:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def forest(rows: Sequence[tuple[str, float, float, float, bool]], title: str, xlabel: str) -> Figure:
    """(label, estimate, low, high, significant) as points with horizontal intervals; significant
    rows dark, the others grey; a line at 0."""
    fig = Figure(figsize=(8, max(2.5, 0.28 * len(rows) + 1.2)))
    ax = fig.add_subplot()
    for i, (label, estimate, low, high, significant) in enumerate(reversed(rows)):
        color = "tab:blue" if significant else "0.6"
        ax.plot([low, high], [i, i], color=color, linewidth=1.5)
        ax.plot([estimate], [i], marker="o", color=color)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in reversed(rows)], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig
