"""Markdown tables and text bar charts: how query results read in the Dagster UI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def md_bar_chart(rows: Iterable[tuple[str, int]], width: int = 30) -> str:
    """A text bar chart (monospace) for distributions in the asset metadata."""
    rows = list(rows)
    top = max((count for _, count in rows), default=0) or 1
    label_width = max((len(str(label)) for label, _ in rows), default=0)
    body = "\n".join(f"{str(label).ljust(label_width)} | {'#' * round(width * count / top):<{width}} {count}"
                     for label, count in rows)
    return f"```\n{body}\n```"
