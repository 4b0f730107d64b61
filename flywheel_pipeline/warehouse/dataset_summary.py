"""What the dataset assets report: distributions of the selected examples and pairs."""

from __future__ import annotations

import duckdb


def _tenths(rows: list[tuple]) -> list[tuple[str, int]]:
    return [(f"[{b / 10:.1f}, {(b + 1) / 10:.1f})", int(n)) for b, n in rows]


def redacted_count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM redacted_messages").fetchone()[0])


def example_score_distribution(con: duckdb.DuckDBPyConnection, *, positives_only: bool = False
                               ) -> list[tuple[str, int]]:
    where = "WHERE label" if positives_only else ""
    return _tenths(con.execute(f"SELECT least(floor(quality_score * 10), 9)::INT, count(*) FROM training_examples "
                               f"{where} GROUP BY 1 ORDER BY 1").fetchall())


def examples_by_task(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """(task_type, framework, positives, negatives)."""
    return con.execute("SELECT task_type, framework, count(*) FILTER (label), count(*) FILTER (NOT label) "
                       "FROM training_examples GROUP BY ALL ORDER BY 3 DESC").fetchall()


def pair_margin_distribution(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    return [(f"{m:.1f}", int(n)) for m, n in con.execute(
        "SELECT round(margin, 1) AS m, count(*) FROM preference_pairs GROUP BY 1 ORDER BY 1").fetchall()]


def pair_score_distribution(con: duckdb.DuckDBPyConnection, top: int = 15) -> list[tuple[str, int]]:
    return [(f"{p:.1f} over {q:.1f}", int(n)) for p, q, n in con.execute(
        "SELECT round(preferred_score, 1), round(non_preferred_score, 1), count(*) FROM preference_pairs "
        "GROUP BY ALL ORDER BY 3 DESC LIMIT ?", [top]).fetchall()]
