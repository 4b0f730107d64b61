"""judge_calibration's reads and writes: each judge's scores on mature, delivered messages beside
their outcomes, reduced in SQL to the sufficient statistics core/calibration.py needs (counts of
positives and negatives per distinct score, DeLong's placement sums, average-rank Spearman,
score deciles), and the tables ``judge_calibration`` / ``judge_calibration_deciles``.

Judges: every judge of ``message_judgements`` at its current criteria version (the version it
judged with most recently; older versions' scores are left out), and people's ratings
(``feedback``, averaged per message) as the judge ``human``. Each is calibrated per task type and
over all task types (``task_type = 'all'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import duckdb

from flywheel_pipeline.core.calibration import (ALL_TASK_TYPES, CALIBRATION_METRICS, DECILES, HUMAN_CRITERIA,
                                                HUMAN_JUDGE, AucStats, Calibration)
from flywheel_pipeline.warehouse.schema import transaction

# each judge's scores at its current criteria version (the one it judged with last)
CURRENT_JUDGEMENTS_SQL = """
SELECT j.message_key, j.judge, j.criteria_version, j.score, j.dimensions
FROM message_judgements j
JOIN (SELECT judge, arg_max(criteria_version, judged_at) AS criteria_version
      FROM message_judgements WHERE score IS NOT NULL GROUP BY judge) USING (judge, criteria_version)
WHERE j.score IS NOT NULL"""

_OUTCOMES = ", ".join(f"l.{flag}::INTEGER AS {metric}" for metric, flag in CALIBRATION_METRICS.items())

# one row per (judge, mature delivered message): the score, the task type, the outcomes, the quality score
SCORED_MESSAGES_SQL = f"""
SELECT s.judge, s.criteria_version, coalesce(m.task_type, 'unknown') AS task_type, s.message_key, s.score,
       {_OUTCOMES}, l.quality_score
FROM (SELECT message_key, judge, criteria_version, score FROM ({CURRENT_JUDGEMENTS_SQL})
      UNION ALL
      SELECT message_key, '{HUMAN_JUDGE}', '{HUMAN_CRITERIA}', avg(rating)::DOUBLE FROM feedback GROUP BY message_key) s
JOIN message_labels l USING (message_key) JOIN messages m USING (message_key)
WHERE l.is_mature AND l.delivered"""

_GROUP = "judge, criteria_version, task_type"
_METRIC_COLUMNS = ", ".join(CALIBRATION_METRICS)


def _scoped(source: str) -> str:
    """The source's rows once under their task type and once under 'all'."""
    columns = f"judge, criteria_version, message_key, score, {_METRIC_COLUMNS}, quality_score"
    return (f"SELECT task_type, {columns} FROM ({source}) "
            f"UNION ALL SELECT '{ALL_TASK_TYPES}' AS task_type, {columns} FROM ({source})")


def _stats_sql(source: str) -> str:
    g = f"{_GROUP}, metric"
    return f"""
WITH scoped AS ({_scoped(source)}),
counts AS (
    SELECT {g}, score, sum(y)::BIGINT AS c1, (count(*) - sum(y))::BIGINT AS c0
    FROM (UNPIVOT (SELECT {_GROUP}, score, {_METRIC_COLUMNS} FROM scoped)
          ON {_METRIC_COLUMNS} INTO NAME metric VALUE y)
    GROUP BY ALL),
cum AS (
    SELECT *, sum(c0) OVER (PARTITION BY {g} ORDER BY score ROWS UNBOUNDED PRECEDING) - c0 AS neg_below,
           sum(c1) OVER (PARTITION BY {g} ORDER BY score DESC ROWS UNBOUNDED PRECEDING) - c1 AS pos_above,
           sum(c1) OVER (PARTITION BY {g}) AS n1, sum(c0) OVER (PARTITION BY {g}) AS n0
    FROM counts),
placements AS (
    SELECT *, CASE WHEN n0 > 0 THEN (neg_below + c0 / 2.0) / n0 END AS v10,
              CASE WHEN n1 > 0 THEN (pos_above + c1 / 2.0) / n1 END AS v01
    FROM cum),
auc AS (
    SELECT {g}, sum(c1 + c0)::BIGINT AS n, sum(c1)::BIGINT AS positives,
           coalesce(sum(c1 * v10), 0) AS sum_v10, coalesce(sum(c1 * v10 * v10), 0) AS sumsq_v10,
           coalesce(sum(c0 * v01), 0) AS sum_v01, coalesce(sum(c0 * v01 * v01), 0) AS sumsq_v01
    FROM placements GROUP BY ALL),
spearman AS (  -- Pearson's r of the average ranks (ties share their mean rank), as scipy's spearmanr
    SELECT {_GROUP}, count(*)::BIGINT AS quality_n, corr(r_score, r_quality) AS spearman
    FROM (SELECT {_GROUP},
                 rank() OVER (PARTITION BY {_GROUP} ORDER BY score)
                     + (count(*) OVER (PARTITION BY {_GROUP}, score) - 1) / 2.0 AS r_score,
                 rank() OVER (PARTITION BY {_GROUP} ORDER BY quality_score)
                     + (count(*) OVER (PARTITION BY {_GROUP}, quality_score) - 1) / 2.0 AS r_quality
          FROM scoped WHERE quality_score IS NOT NULL)
    GROUP BY ALL)
SELECT a.judge, a.criteria_version, a.task_type, a.metric, a.n, a.positives, a.sum_v10, a.sumsq_v10,
       a.sum_v01, a.sumsq_v01, coalesce(s.quality_n, 0), s.spearman
FROM auc a LEFT JOIN spearman s USING ({_GROUP})
ORDER BY a.judge, a.criteria_version, a.task_type, a.metric"""


def auc_stats(con: duckdb.DuckDBPyConnection, source: str = SCORED_MESSAGES_SQL) -> list[AucStats]:
    """Sufficient statistics per (judge, criteria version, task type and 'all', metric). ``source``
    is a query with SCORED_MESSAGES_SQL's columns (the benchmark passes simulated ones)."""
    return [AucStats(*row[:4], int(row[4]), int(row[5]), *map(float, row[6:10]), int(row[10]),
                     None if row[11] is None else float(row[11]))
            for row in con.execute(_stats_sql(source)).fetchall()]


def _deciles_sql(source: str) -> str:
    rates = ", ".join(f"avg({m}) AS {m}_rate" for m in CALIBRATION_METRICS)
    return f"""
SELECT {_GROUP}, decile, count(*)::BIGINT AS n, avg(score) AS mean_score, min(score) AS min_score,
       max(score) AS max_score, {rates}
FROM (SELECT *, ntile({DECILES}) OVER (PARTITION BY {_GROUP} ORDER BY score, message_key) AS decile
      FROM ({_scoped(source)}))
GROUP BY ALL ORDER BY ALL"""


DECILE_COLUMNS: tuple[str, ...] = ("judge", "criteria_version", "task_type", "decile", "n", "mean_score",
                                   "min_score", "max_score", *(f"{m}_rate" for m in CALIBRATION_METRICS))


def decile_rows(con: duckdb.DuckDBPyConnection, source: str = SCORED_MESSAGES_SQL) -> list[dict]:
    """The calibration table: per judge and task type, messages in score deciles (ties broken by
    message key), their mean score and outcome rates."""
    return [dict(zip(DECILE_COLUMNS, row)) for row in con.execute(_deciles_sql(source)).fetchall()]


COLUMNS: tuple[str, ...] = ("judge", "criteria_version", "task_type", "metric", "n", "positives", "rate", "auc",
                            "auc_se", "auc_low", "auc_high", "interval_level", "spearman", "spearman_p",
                            "quality_n", "gated", "trusted")


def write_calibration(con: duckdb.DuckDBPyConnection, rows: Sequence[Calibration], deciles: Iterable[dict],
                      computed_at: datetime) -> None:
    """Replace the run's rows of judge_calibration and judge_calibration_deciles (one transaction)."""
    with transaction(con):
        con.execute("DELETE FROM judge_calibration")
        con.execute("DELETE FROM judge_calibration_deciles")
        if rows:
            con.executemany(f"INSERT INTO judge_calibration ({', '.join(COLUMNS)}, computed_at) "
                            f"VALUES ({', '.join('?' for _ in COLUMNS)}, ?)",
                            [[getattr(r, c) for c in COLUMNS] + [computed_at] for r in rows])
        decile_list = list(deciles)
        if decile_list:
            con.executemany(f"INSERT INTO judge_calibration_deciles ({', '.join(DECILE_COLUMNS)}, computed_at) "
                            f"VALUES ({', '.join('?' for _ in DECILE_COLUMNS)}, ?)",
                            [[d[c] for c in DECILE_COLUMNS] + [computed_at] for d in decile_list])


def trust(con: duckdb.DuckDBPyConnection, judges: Iterable[str], metric: str, task_type: str) -> dict[str, dict]:
    """The calibration rows of these judges for one metric and task type (judge -> row); a judge
    without a row (never calibrated, or no mature messages) is absent: not trusted."""
    names = [j for j in judges if j]
    if not names:
        return {}
    rows = con.execute(f"""SELECT {', '.join(COLUMNS)}, computed_at FROM judge_calibration
                           WHERE judge IN ({', '.join('?' for _ in names)}) AND metric = ? AND task_type = ?""",
                       [*names, metric, task_type]).fetchall()
    return {r[0]: dict(zip((*COLUMNS, "computed_at"), r)) for r in rows}


def dominant_heuristic(con: duckdb.DuckDBPyConnection, task_type: str) -> str | None:
    """The heuristic judge that judged most messages of the task type ('all': of every task type)."""
    row = con.execute("""SELECT j.judge FROM message_judgements j JOIN messages m USING (message_key)
                         WHERE j.judge LIKE 'heuristic:%' AND j.score IS NOT NULL AND (? = ? OR m.task_type = ?)
                         GROUP BY j.judge ORDER BY count(*) DESC, j.judge LIMIT 1""",
                      [task_type, ALL_TASK_TYPES, task_type]).fetchone()
    return None if row is None else row[0]
