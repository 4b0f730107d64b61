"""The leaderboard's and velocity's reads: per-model outcome sums over mature messages, and the
weekly series of messages, outcomes, training-ready examples, model versions and score."""

from __future__ import annotations

import duckdb

from flywheel_pipeline.core.leaderboard import ModelOutcomes
from flywheel_pipeline.core.outcome_score import weighted_score_sql

_SCORE = weighted_score_sql("deal_closed", "meeting_booked", "replied")

_PER_MODEL = f"""
SELECT {{organization}} AS organization_id, model_id, count(DISTINCT lead_id), count(*), count(*) FILTER (replied),
       count(*) FILTER (meeting_booked), count(*) FILTER (deal_closed), sum(coalesce(deal_value, 0)),
       sum({_SCORE}), sum(power({_SCORE}, 2))
FROM outcome_labels WHERE is_mature GROUP BY ALL ORDER BY organization_id, model_id
"""


def model_outcomes(con: duckdb.DuckDBPyConnection, *, per_organization: bool) -> list[ModelOutcomes]:
    """Every model's mature outcomes over all messages, or per organization."""
    rows = con.execute(_PER_MODEL.format(organization="organization_id" if per_organization else "NULL")).fetchall()
    return [ModelOutcomes(org, model, int(leads), int(messages), int(replies), int(meetings), int(deals),
                          float(revenue), float(s), float(s2))
            for org, model, leads, messages, replies, meetings, deals, revenue, s, s2 in rows]


WEEKLY_HEADER = ("week", "messages", "mature outcomes", "training-ready", "model versions", "weighted score")


def weekly_velocity(con: duckdb.DuckDBPyConnection, min_quality_score: float = 0.6) -> list[tuple]:
    """One row per week of sending (WEEKLY_HEADER); the score is the mean over mature messages."""
    return con.execute(f"""
        WITH w AS (
            SELECT date_trunc('week', sent_at)::DATE AS week, count(*) AS messages,
                   count(*) FILTER (is_mature) AS mature,
                   count(*) FILTER (is_mature AND quality_score >= ? AND NOT bounced) AS training_ready,
                   avg({_SCORE}) FILTER (is_mature) AS weighted_score
            FROM outcome_labels GROUP BY 1),
        v AS (SELECT date_trunc('week', created_at)::DATE AS week, count(*) AS versions
              FROM model_registry GROUP BY 1)
        SELECT w.week, w.messages, w.mature, w.training_ready, coalesce(v.versions, 0), w.weighted_score
        FROM w LEFT JOIN v USING (week) ORDER BY w.week""", [min_quality_score]).fetchall()


def training_ready_outcomes(con: duckdb.DuckDBPyConnection, min_quality_score: float = 0.6) -> int:
    """Mature, delivered outcomes good enough to train on."""
    return int(con.execute("SELECT count(*) FROM message_labels WHERE is_mature AND NOT bounced "
                           "AND quality_score >= ?", [min_quality_score]).fetchone()[0])
