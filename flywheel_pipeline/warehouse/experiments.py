"""Experiments in SQL: per-arm sufficient statistics of per-lead metrics, the traffic a step
gets, and the ``ab_test_results`` table.

The unit is the lead: a lead's metrics aggregate all its mature routed messages of the arm
(reply = any human reply, ..., revenue = sum of closed deal values, messages = count).

Only messages routed under the experiment's current allocation count (``metadata.allocation``,
recorded by the outreach app from ``choose_model``): after a rollout step leads move between
arms and the split changes, so arms are compared within one allocation. Messages of an app
that does not record allocations are all counted (``allocation=None``).

CUPED covariate of the weighted score: the lead's engagement before the experiment's current
allocation started (its first routed message): how many of its earlier messages a human
opened, clicked and replied to (each counted once per message), whatever model wrote them.
Measured before the lead was assigned, it cannot have been moved by the arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb

from flywheel_pipeline.core.outcome_score import weighted_score_sql
from flywheel_pipeline.core.stats.policy import CONTROL, COST_PER_MEETING, PRIMARY, Decision
from flywheel_pipeline.core.stats.sufficient import ArmStats

_SCORE = weighted_score_sql("close", "meeting", "reply")


@dataclass(frozen=True)
class Layer:
    """What an experiment's arms name: models (the arm's ab_group and model, ``metadata.allocation``)
    or template versions (``<template_id>@<version>``, ``metadata.template_allocation``). Model and
    template experiments are independent layers (core/routing.py), analysed the same way."""
    name: str
    arm_match: str  # SQL over the arms CTE ``a`` (arm, model) and messages ``m``
    unit: str  # SQL over messages ``m``: what an arm names
    allocation_key: str  # the metadata key the outreach app records the allocation under
    baseline_unit: str  # SQL over ``m``: the messages the champion's planning baseline is taken from

    @property
    def allocation(self) -> str:
        return f"json_extract_string(m.metadata, '$.{self.allocation_key}')"


MODEL_LAYER = Layer("model", "a.arm = m.ab_group AND a.model = m.model_id", "m.model_id", "allocation",
                    "m.model_id = $model")
_TEMPLATE_UNIT = "(m.template_id || '@' || m.template_version)"
# a template step is planned from every message of its task type before it started: the traffic the
# champion template takes over (it may have sent nothing yet)
TEMPLATE_LAYER = Layer("template", f"a.model = {_TEMPLATE_UNIT}", _TEMPLATE_UNIT, "template_allocation", "true")

_PER_LEAD = """
WITH arms(arm, model) AS (SELECT * FROM (VALUES {arms})),
routed AS (
    SELECT l.lead_id, a.arm AS arm, l.replied, l.positive_reply, l.meeting_booked, l.deal_closed,
           coalesce(l.deal_value, 0) AS revenue, l.unsubscribed, l.reply_sentiment = 'negative' AS negative_reply,
           coalesce(m.cost_usd, 0) AS cost, l.quality_score, m.sent_at
    FROM outcome_labels l JOIN messages m USING (message_key) JOIN arms a ON {match}
    WHERE l.is_mature
      AND ($allocation IS NULL OR {allocation} = $allocation)
), started AS (
    SELECT coalesce(
        (SELECT min(m.sent_at) FROM messages m WHERE $allocation IS NOT NULL
            AND {allocation} = $allocation),
        (SELECT min(sent_at) FROM routed)) AS first_sent
), per_lead AS (
    SELECT arm, lead_id,
           max(replied::INT) AS reply, max(positive_reply::INT) AS positive, max(meeting_booked::INT) AS meeting,
           max(deal_closed::INT) AS close, max(coalesce(negative_reply, false)::INT) AS negative,
           max(unsubscribed::INT) AS unsub, sum(revenue) AS revenue, count(*) AS msgs, sum(cost) AS cost,
           avg(quality_score) AS quality
    FROM routed GROUP BY ALL
), pre AS (
    SELECT l.lead_id, sum(l.opened::INT + l.clicked::INT + l.replied::INT)::DOUBLE AS engagement
    FROM outcome_labels l
    WHERE l.sent_at < (SELECT first_sent FROM started) AND l.lead_id IN (SELECT lead_id FROM per_lead)
    GROUP BY l.lead_id
), scored AS (
    SELECT p.*, {score} AS score, coalesce(pre.engagement, 0) AS x
    FROM per_lead p LEFT JOIN pre USING (lead_id)
)
SELECT arm, count(*) AS n,
       sum(reply) AS reply_rate, sum(positive) AS positive_reply_rate, sum(meeting) AS meeting_rate,
       sum(close) AS close_rate, sum(negative) AS negative_reply_rate, sum(unsub) AS unsubscribe_rate,
       sum(score) AS score, sum(score * score) AS score2, sum(x) AS x, sum(x * x) AS x2, sum(x * score) AS x_score,
       sum(revenue) AS revenue, sum(revenue * revenue) AS revenue2, sum(msgs) AS msgs, sum(msgs * msgs) AS msgs2,
       sum(revenue * msgs) AS revenue_msgs, sum(cost) AS cost, sum(cost * cost) AS cost2,
       sum(cost * meeting) AS cost_meeting,
       sum(quality) AS quality, sum(quality * quality) AS quality2
FROM scored GROUP BY arm
"""

PROPORTION_COLUMNS = ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
                      "unsubscribe_rate")


def _arms_sql(arms: dict[str, str]) -> tuple[str, list[str]]:
    if not arms or CONTROL not in arms:
        raise ValueError(f"arms need the control arm {CONTROL!r}, got {sorted(arms)}")
    return ", ".join(["(?, ?)"] * len(arms)), [v for pair in arms.items() for v in pair]


def allocations_logged(con: duckdb.DuckDBPyConnection, experiment_id: str, layer: Layer = MODEL_LAYER) -> bool:
    """Whether the outreach app records allocations for this experiment's messages (an
    allocation id starts with its experiment id, see core/assignment.allocation_id)."""
    routed = "m.ab_group IS NOT NULL AND m.ab_group <> 'default' AND " if layer is MODEL_LAYER else ""
    return con.execute(f"SELECT EXISTS (SELECT 1 FROM messages m WHERE {routed}"
                       f"starts_with({layer.allocation}, ? || '@'))", [experiment_id]).fetchone()[0]


def arm_has_messages(con: duckdb.DuckDBPyConnection, arm: str, model_id: str, layer: Layer = MODEL_LAYER) -> bool:
    """Whether any message was sent in this arm with this model (template layer: this template
    version; an experiment just published has none yet)."""
    return con.execute(f"SELECT EXISTS (SELECT 1 FROM messages m JOIN (SELECT ? AS arm, ? AS model) a "
                       f"ON {layer.arm_match})", [arm, model_id]).fetchone()[0]


def arm_statistics(con: duckdb.DuckDBPyConnection, arms: dict[str, str],
                   allocation: str | None = None, layer: Layer = MODEL_LAYER) -> dict[str, dict[str, ArmStats]]:
    """``stats[metric][arm]`` for the arms {ab_group: model_id} (one of them ``champion``; template
    layer: {ab_group: "<template_id>@<version>"})."""
    values, params = _arms_sql(arms)
    sql = _PER_LEAD.format(arms=values, score=_SCORE, match=layer.arm_match,
                           allocation=layer.allocation).replace("$allocation", "?")
    cursor = con.execute(sql, params + [allocation] * 4)
    columns = [d[0] for d in cursor.description]
    rows = {row[0]: dict(zip(columns, row)) for row in cursor.fetchall()}
    stats: dict[str, dict[str, ArmStats]] = {}
    for arm in arms:
        r = {k: float(v or 0) for k, v in rows.get(arm, {}).items() if k != "arm"}
        n = int(r.get("n", 0))

        def s(*names: str, r: dict[str, float] = r) -> list[float]:
            return [r.get(name, 0.0) for name in names]

        for name in PROPORTION_COLUMNS:
            stats.setdefault(name, {})[arm] = ArmStats.proportion(n, int(r.get(name, 0)))
        # the weighted score with the lead's pre-experiment engagement as CUPED covariate
        stats.setdefault(PRIMARY, {})[arm] = ArmStats(n, *s("score", "score2", "x", "x2", "x_score"))
        stats.setdefault("revenue_per_lead", {})[arm] = ArmStats(n, *s("revenue", "revenue2"))
        stats.setdefault("revenue_per_message", {})[arm] = ArmStats(
            n, *s("revenue", "revenue2", "msgs", "msgs2", "revenue_msgs"))
        # cost per meeting as a ratio metric per lead: y = generation cost, x = meeting (0/1, so x2 = x)
        stats.setdefault(COST_PER_MEETING, {})[arm] = ArmStats(
            n, *s("cost", "cost2", "meeting_rate", "meeting_rate", "cost_meeting"))
        stats.setdefault("quality_score", {})[arm] = ArmStats(n, *s("quality", "quality2"))
    return stats


def traffic(con: duckdb.DuckDBPyConnection, arms: dict[str, str], allocation: str | None,
            layer: Layer = MODEL_LAYER) -> tuple[int, float | None]:
    """Leads this allocation's arms have reached so far (mature or not) and new leads a day
    (None before a day of traffic)."""
    values, params = _arms_sql(arms)
    leads, days = con.execute(f"""
        WITH arms(arm, model) AS (SELECT * FROM (VALUES {values}))
        SELECT count(DISTINCT m.lead_id), date_diff('second', min(m.sent_at), max(m.sent_at)) / 86400.0
        FROM messages m JOIN arms a ON {layer.arm_match}
        WHERE ? IS NULL OR {layer.allocation} = ?""",
                              params + [allocation, allocation]).fetchone()
    return int(leads), (leads / days if leads and days and days >= 1 else None)


def allocation_start(con: duckdb.DuckDBPyConnection, arms: dict[str, str], allocation: str | None,
                     layer: Layer = MODEL_LAYER) -> datetime | None:
    """When the allocation's first message was sent (None before any)."""
    values, params = _arms_sql(arms)
    return con.execute(f"""
        WITH arms(arm, model) AS (SELECT * FROM (VALUES {values}))
        SELECT min(m.sent_at) FROM messages m JOIN arms a ON {layer.arm_match}
        WHERE ? IS NULL OR {layer.allocation} = ?""",
                       params + [allocation, allocation]).fetchone()[0]


def baseline(con: duckdb.DuckDBPyConnection, model_id: str, *, organization_id: str | None, task_type: str,
             before: datetime | None = None, days: int = 28, layer: Layer = MODEL_LAYER) -> ArmStats:
    """The champion's weighted score per lead over its mature messages of the ``days`` days
    before ``before`` (default: its latest message), for planning a step before it starts
    (template layer: every message of the task type, see TEMPLATE_LAYER)."""
    unit = layer.baseline_unit
    row = con.execute(f"""
        WITH recent AS (
            SELECT l.lead_id, l.replied::INT AS reply, l.meeting_booked::INT AS meeting,
                   l.deal_closed::INT AS close
            FROM outcome_labels l JOIN messages m USING (message_key)
            WHERE {unit} AND l.is_mature AND ($org IS NULL OR l.organization_id = $org)
              AND ($task = 'all' OR l.task_type = $task)
              AND l.sent_at < coalesce($before, (SELECT max(m.sent_at) + INTERVAL 1 SECOND FROM messages m
                                                 WHERE {unit}))
              AND l.sent_at >= coalesce($before, (SELECT max(m.sent_at) FROM messages m WHERE {unit}))
                               - INTERVAL {int(days)} DAY
        ), per_lead AS (
            SELECT lead_id, max(reply) AS reply, max(meeting) AS meeting, max(close) AS close FROM recent GROUP BY 1
        )
        SELECT count(*), coalesce(sum({_SCORE}), 0), coalesce(sum(power({_SCORE}, 2)), 0) FROM per_lead""",
                      {"org": organization_id, "task": task_type, "before": before,
                       **({"model": model_id} if "$model" in unit else {})}).fetchone()
    return ArmStats(int(row[0]), float(row[1]), float(row[2]))


def step_plan(con: duckdb.DuckDBPyConnection, allocation: str) -> float | None:
    """The planned leads of a step, fixed when it was first evaluated (None if not yet planned)."""
    row = con.execute("SELECT planned_leads FROM experiment_plans WHERE allocation = ?", [allocation]).fetchone()
    return None if row is None else float(row[0])


def save_step_plan(con: duckdb.DuckDBPyConnection, *, allocation: str, family: str, experiment_id: str, step: str,
                   planned: float, champion_baseline: ArmStats) -> None:
    # the first plan of an allocation is kept (no INSERT OR IGNORE: DuckLake has no keys)
    con.execute("INSERT INTO experiment_plans SELECT ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP "
                "WHERE NOT EXISTS (SELECT 1 FROM experiment_plans WHERE allocation = ?)",
                [allocation, family, experiment_id, step, planned, champion_baseline.n, champion_baseline.mean,
                 champion_baseline.var, allocation])


def record_decision(con: duckdb.DuckDBPyConnection, *, evaluated_at: datetime, family: str, experiment_id: str,
                    arms: dict[str, str], decision: Decision, planned_leads: float) -> None:
    """One row per challenger and metric (one row per challenger without metrics yet)."""
    rows = []
    for arm, verdict in decision.arms.items():
        metrics = [m for m in decision.metrics if m.arm == arm] or [None]
        for m in metrics:
            rows.append([evaluated_at, family, experiment_id, arms[arm], arms[CONTROL], verdict, decision.reasons[arm],
                         decision.srm_p_value, decision.leads[arm], decision.leads[CONTROL],
                         *([m.metric, m.challenger, m.champion, m.lift, m.relative_lift, m.ci_low, m.ci_high,
                            m.p_value, m.p_adjusted, m.seq_low, m.seq_high, m.chance_to_win, m.expected_loss,
                            m.exact_test] if m else [None] * 14),
                         arm, decision.step, decision.final, planned_leads, decision.variance_reduction,
                         decision.decision])
    con.executemany(f"INSERT INTO ab_test_results ({', '.join(AB_RESULTS_INSERT)}) "
                    f"VALUES ({', '.join(['?'] * len(AB_RESULTS_INSERT))})", rows)


# The columns record_decision writes, by name (a migrated table may hold them in another order).
AB_RESULTS_INSERT = (
    "evaluated_at", "family", "experiment_id", "challenger", "champion", "decision", "reason", "srm_p_value",
    "challenger_leads", "champion_leads", "metric", "challenger_value", "champion_value", "lift", "relative_lift",
    "ci_low", "ci_high", "p_value", "p_adjusted", "seq_low", "seq_high", "chance_to_win", "expected_loss",
    "exact_test", "arm", "step", "final", "planned_leads", "variance_reduction", "overall_decision")


def latest_verdicts(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """The latest evaluation of each family's challengers:
    (family, arm, challenger model, champion model, verdict, reason, final)."""
    return con.execute("""
        WITH latest AS (
            SELECT family, max(evaluated_at) AS at FROM ab_test_results GROUP BY family
        )
        SELECT DISTINCT r.family, coalesce(r.arm, 'challenger'), r.challenger, r.champion, r.decision, r.reason,
               coalesce(r.final, false)
        FROM ab_test_results r JOIN latest l ON r.family = l.family AND r.evaluated_at = l.at
        ORDER BY 1, 2""").fetchall()
