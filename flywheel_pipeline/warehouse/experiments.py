"""Per-arm sufficient statistics of per-lead metrics for a running experiment, in SQL.

The unit is the lead: a lead's metrics aggregate all its mature routed messages of the arm
(reply = any human reply, ..., revenue = sum of closed deal values, messages = count).

Only messages routed under the experiment's current allocation count (``metadata.allocation``,
recorded by the outreach app from ``choose_model``): after a rollout step leads move between
arms and the split changes, so arms are compared within one allocation. Messages of an app
that does not record allocations are all counted (``allocation=None``).
"""

from __future__ import annotations

import duckdb

from flywheel_pipeline.core.stats.policy import COST_PER_MEETING, PRIMARY
from flywheel_pipeline.core.stats.sufficient import ArmStats

_PER_LEAD = """
WITH routed AS (
    SELECT l.lead_id, l.ab_group AS arm, l.replied, l.positive_reply, l.meeting_booked, l.deal_closed,
           coalesce(l.deal_value, 0) AS revenue, l.unsubscribed, l.reply_sentiment = 'negative' AS negative_reply,
           coalesce(m.cost_usd, 0) AS cost, l.quality_score
    FROM outcome_labels l JOIN messages m USING (message_key)
    WHERE l.is_mature AND l.ab_group IN ('challenger', 'champion')
      AND ((l.ab_group = 'challenger' AND l.model_id = $challenger) OR (l.ab_group = 'champion' AND l.model_id = $champion))
      AND ($allocation IS NULL OR json_extract_string(m.metadata, '$.allocation') = $allocation)
), per_lead AS (
    SELECT arm, lead_id,
           max(replied::INT) AS reply, max(positive_reply::INT) AS positive, max(meeting_booked::INT) AS meeting,
           max(deal_closed::INT) AS close, max(coalesce(negative_reply, false)::INT) AS negative,
           max(unsubscribed::INT) AS unsub, sum(revenue) AS revenue, count(*) AS msgs, sum(cost) AS cost,
           avg(quality_score) AS quality
    FROM routed GROUP BY ALL
)
SELECT arm, count(*) AS n,
       sum(reply), sum(positive), sum(meeting), sum(close), sum(negative), sum(unsub),
       sum(0.5 * close + 0.3 * meeting + 0.2 * reply), sum(power(0.5 * close + 0.3 * meeting + 0.2 * reply, 2)),
       sum(revenue), sum(revenue * revenue), sum(msgs), sum(msgs * msgs), sum(revenue * msgs), sum(cost),
       sum(quality), sum(quality * quality), sum(cost * cost), sum(cost * meeting)
FROM per_lead GROUP BY arm
"""


def allocations_logged(con: duckdb.DuckDBPyConnection, experiment_id: str) -> bool:
    """Whether the outreach app records allocations for this experiment's messages (an
    allocation id starts with its experiment id, see core/assignment.allocation_id)."""
    return con.execute("SELECT EXISTS (SELECT 1 FROM messages WHERE ab_group IN ('challenger', 'champion') "
                       "AND starts_with(json_extract_string(metadata, '$.allocation'), ? || '@'))",
                       [experiment_id]).fetchone()[0]


def challenger_has_messages(con: duckdb.DuckDBPyConnection, challenger_model: str) -> bool:
    """Whether any message was sent in the challenger arm with this model (an experiment just
    published has none yet)."""
    return con.execute("SELECT EXISTS (SELECT 1 FROM messages WHERE ab_group = 'challenger' AND model_id = ?)",
                       [challenger_model]).fetchone()[0]


def arm_statistics(con: duckdb.DuckDBPyConnection, challenger_model: str, champion_model: str,
                   allocation: str | None = None) -> dict[str, dict[str, ArmStats]]:
    params = {"challenger": challenger_model, "champion": champion_model, "allocation": allocation}
    rows = {r[0]: r[1:] for r in con.execute(_PER_LEAD, params).fetchall()}
    stats: dict[str, dict[str, ArmStats]] = {}
    names = ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
             "unsubscribe_rate")
    for arm in ("challenger", "champion"):
        r = rows.get(arm)
        if r is None:
            r = (0,) + (0.0,) * 19
        n = int(r[0])
        for i, name in enumerate(names):
            stats.setdefault(name, {})[arm] = ArmStats.proportion(n, int(r[1 + i]))
        stats.setdefault(PRIMARY, {})[arm] = ArmStats(n, float(r[7]), float(r[8]))
        stats.setdefault("revenue_per_lead", {})[arm] = ArmStats(n, float(r[9]), float(r[10]))
        stats.setdefault("revenue_per_message", {})[arm] = ArmStats(n, float(r[9]), float(r[10]), float(r[11]),
                                                                    float(r[12]), float(r[13]))
        # cost per meeting as a ratio metric per lead: y = generation cost, x = meeting (0/1)
        stats.setdefault(COST_PER_MEETING, {})[arm] = ArmStats(n, float(r[14]), float(r[17]), float(r[3]),
                                                              float(r[3]), float(r[18]))
        stats.setdefault("quality_score", {})[arm] = ArmStats(n, float(r[15]), float(r[16]))
    return stats
