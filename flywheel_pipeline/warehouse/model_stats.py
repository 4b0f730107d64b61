"""The routing strategies' measurements, in SQL: per model, task type and organization, and
pooled over organizations (``*``) and over task types (``all``): mature messages and their
outcomes (replies, positive replies, meetings, the weighted score's sums), the exact cost per
message from ``cost_analysis`` (given ``cost_usd`` or tokens at catalog prices), latency and
token medians; plus each organization's recent messages (``GET /api/v1/executions``).

The derived table ``model_choice_stats`` is rebuilt per run (CREATE OR REPLACE, like
``cost_analysis``); the ``model_choice_stats`` asset turns it into the published snapshot the
service reads (``$FLYWHEEL_HOME/model_stats.json``)."""

from __future__ import annotations

import duckdb

from flywheel_pipeline.core.model_choice import ALL_ORGANIZATIONS, ALL_TASKS
from flywheel_pipeline.core.outcome_score import weighted_score_sql

_SCORE = weighted_score_sql("l.deal_closed", "l.meeting_booked", "l.replied")
_GROUPING = ("GROUPING SETS ((model_id, task_type, organization_id), (model_id, task_type), "
             "(model_id, organization_id), (model_id))")

COLUMNS = ("model_id", "task_type", "organization_id", "messages", "mature_messages", "replies", "positive_replies",
           "meetings", "deals", "score_sum", "score_sum_squares", "priced_messages", "cost_usd", "cost_per_message",
           "latency_messages", "latency_ms_p50", "latency_ms_p95", "prompt_tokens_p50", "completion_tokens_p50")


def build_model_choice_stats(con: duckdb.DuckDBPyConnection) -> int:
    """Rebuild ``model_choice_stats`` (needs ``cost_analysis``, rebuilt first); returns its rows.
    ``organization_id`` ``*`` is every organization, ``task_type`` ``all`` every task type."""
    con.execute(f"""
        CREATE OR REPLACE TABLE model_choice_stats AS
        WITH outcomes AS (
            SELECT m.model_id, coalesce(m.task_type, '') AS task_type, m.organization_id,
                   count(*) AS messages,
                   count(*) FILTER (l.is_mature) AS mature_messages,
                   count(*) FILTER (l.is_mature AND l.replied) AS replies,
                   count(*) FILTER (l.is_mature AND l.positive_reply) AS positive_replies,
                   count(*) FILTER (l.is_mature AND l.meeting_booked) AS meetings,
                   count(*) FILTER (l.is_mature AND l.deal_closed) AS deals,
                   coalesce(sum({_SCORE}) FILTER (l.is_mature), 0) AS score_sum,
                   coalesce(sum(power({_SCORE}, 2)) FILTER (l.is_mature), 0) AS score_sum_squares,
                   count(m.latency_ms) FILTER (m.latency_ms >= 0) AS latency_messages,
                   quantile_cont(m.latency_ms, 0.5) FILTER (m.latency_ms >= 0) AS latency_ms_p50,
                   quantile_cont(m.latency_ms, 0.95) FILTER (m.latency_ms >= 0) AS latency_ms_p95,
                   quantile_cont(m.prompt_tokens, 0.5) FILTER (m.prompt_tokens >= 0) AS prompt_tokens_p50,
                   quantile_cont(m.completion_tokens, 0.5) FILTER (m.completion_tokens >= 0) AS completion_tokens_p50,
                   grouping(m.task_type) AS all_tasks, grouping(m.organization_id) AS all_orgs
            FROM messages m LEFT JOIN message_labels l USING (message_key)
            WHERE m.model_id IS NOT NULL
            GROUP BY GROUPING SETS ((m.model_id, m.task_type, m.organization_id), (m.model_id, m.task_type),
                                    (m.model_id, m.organization_id), (m.model_id))),
        costs AS (
            SELECT model_id, coalesce(task_type, '') AS task_type, organization_id,
                   sum(priced_messages) AS priced_messages, sum(cost_usd) AS cost_usd,
                   grouping(task_type) AS all_tasks, grouping(organization_id) AS all_orgs
            FROM cost_analysis WHERE model_id IS NOT NULL
            GROUP BY {_GROUPING})
        SELECT o.model_id,
               CASE WHEN o.all_tasks = 1 THEN '{ALL_TASKS}' ELSE o.task_type END AS task_type,
               CASE WHEN o.all_orgs = 1 THEN '{ALL_ORGANIZATIONS}' ELSE o.organization_id END AS organization_id,
               o.messages, o.mature_messages, o.replies, o.positive_replies, o.meetings, o.deals,
               o.score_sum, o.score_sum_squares, coalesce(c.priced_messages, 0)::BIGINT AS priced_messages,
               c.cost_usd, c.cost_usd::DOUBLE / nullif(c.priced_messages, 0) AS cost_per_message,
               o.latency_messages, o.latency_ms_p50, o.latency_ms_p95, o.prompt_tokens_p50, o.completion_tokens_p50
        FROM outcomes o LEFT JOIN costs c
          ON c.model_id = o.model_id AND c.all_tasks = o.all_tasks AND c.all_orgs = o.all_orgs
         AND (o.all_tasks = 1 OR c.task_type = o.task_type)
         AND (o.all_orgs = 1 OR c.organization_id = o.organization_id)
        ORDER BY 3, 2, 1""")
    return int(con.execute("SELECT count(*) FROM model_choice_stats").fetchone()[0])


def stats_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    cursor = con.execute(f"SELECT {', '.join(COLUMNS)} FROM model_choice_stats ORDER BY organization_id, task_type, "
                         "model_id")
    return [dict(zip(COLUMNS, row)) for row in cursor.fetchall()]


def task_tokens(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[float, float]]:
    """Median prompt and completion tokens per task type (every model and organization; ``all``
    too): what a message of the task costs on a model that has not sent one."""
    rows = con.execute(f"""
        SELECT CASE WHEN grouping(task_type) = 1 THEN '{ALL_TASKS}' ELSE coalesce(task_type, '') END,
               quantile_cont(prompt_tokens, 0.5), quantile_cont(completion_tokens, 0.5)
        FROM messages WHERE prompt_tokens >= 0 AND completion_tokens >= 0
        GROUP BY GROUPING SETS ((task_type), ())""").fetchall()
    return {t: (float(p), float(c)) for t, p, c in rows if p is not None and c is not None}


def cost_analysis_rows(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """``cost_analysis`` as JSON-ready dicts (money as float USD), for the published snapshot."""
    cursor = con.execute("""
        SELECT model_id, task_type, organization_id, messages, priced_messages, unpriced_messages,
               cost_usd::DOUBLE AS cost_usd, cost_per_message, mature_messages, replies, positive_replies, meetings,
               deals, cost_per_reply, cost_per_reply_low, cost_per_reply_high, cost_per_positive_reply,
               cost_per_meeting, cost_per_deal, latency_ms_p50, latency_ms_p95, savings_model,
               savings_usd::DOUBLE AS savings_usd, savings_reason
        FROM cost_analysis ORDER BY organization_id, task_type, model_id""")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def recent_executions(con: duckdb.DuckDBPyConnection, per_organization: int) -> list[dict]:
    """Each organization's latest ``per_organization`` messages with their outcome so far, cost,
    latency, tokens and (when judged) the heuristic judge's score."""
    judged = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'message_judgements'"
                         ).fetchone()[0]
    judge_join = ("LEFT JOIN (SELECT message_key, max(score) AS judge_score FROM message_judgements "
                  "WHERE judge LIKE 'heuristic:%' GROUP BY 1) j USING (message_key)") if judged else ""
    cursor = con.execute(f"""
        SELECT m.organization_id, m.message_id, m.lead_id, m.campaign_id, m.model_id, m.model_version, m.ab_group,
               m.task_type, strftime(m.sent_at, '%Y-%m-%dT%H:%M:%SZ') AS sent_at, l.stage, l.replied,
               l.positive_reply, l.meeting_booked, l.deal_closed, l.quality_score, l.is_mature,
               m.cost_usd, m.latency_ms, m.prompt_tokens, m.completion_tokens,
               {'j.judge_score' if judged else 'NULL::DOUBLE'} AS judge_score
        FROM messages m LEFT JOIN message_labels l USING (message_key) {judge_join}
        QUALIFY row_number() OVER (PARTITION BY m.organization_id ORDER BY m.sent_at DESC, m.message_id DESC)
                <= {int(per_organization)}
        ORDER BY m.organization_id, m.sent_at DESC, m.message_id DESC""")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]
