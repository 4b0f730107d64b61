"""Outcome labelling in SQL, incremental in the volume of new events.

Two steps, both in DuckDB:

1. **Fold** email events with ``batch_id`` above the last folded batch into
   ``message_state``, a per-message aggregate whose columns all merge with
   min/max/sum/list_concat. Old events are never reread (``batch_id`` is append-ordered, so
   row-group zone maps skip history).
2. **Label** the *touched* messages (new messages, new email events, newly attributed CRM
   events, newly classified replies) from ``message_state`` + ``messages`` + ``crm_events``
   + ``reply_intents``, and replace their rows in ``outcome_labels``. Maturity, which moves
   with the clock, is then refreshed for every label with one cheap pass over the label
   table (one row per message, no events).

A full relabel (``full=True``) rebuilds ``message_state`` from all events and labels every
message; a change of policy relabels every message from ``message_state`` (no event scan).
The rules are documented in docs/labelling.md and mirrored by core/label_policy.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb

from flywheel_pipeline.core.label_policy import LabelPolicy
from flywheel_pipeline.warehouse.schema import max_batch, transaction

_FOLD_SELECT = """
SELECT message_id,
       count(*) AS events,
       min(occurred_at) FILTER (event = 'delivered') AS delivered_first,
       max(occurred_at) FILTER (event = 'delivered') AS delivered_last,
       max(occurred_at) FILTER (event IN ('bounce', 'dropped')) AS bounce_last,
       min(occurred_at) FILTER (event = 'open' AND machine_open IS NOT TRUE) AS human_open_first,
       count(*) FILTER (event = 'open' AND machine_open IS NOT TRUE) AS human_opens,
       count(*) FILTER (event = 'open' AND machine_open IS TRUE) AS machine_opens,
       list({{'ts': occurred_at, 'url': url}}) FILTER (event = 'click') AS clicks,
       min(occurred_at) FILTER (event = 'spamreport') AS spam_first,
       min(occurred_at) FILTER (event IN ('unsubscribe', 'group_unsubscribe')) AS unsub_first
FROM email_events
WHERE {where}
GROUP BY message_id
"""

_MERGE_STATE = """
CREATE OR REPLACE TEMP TABLE _merged AS
SELECT d.message_id,
       d.events + coalesce(s.events, 0) AS events,
       least(d.delivered_first, s.delivered_first) AS delivered_first,
       greatest(d.delivered_last, s.delivered_last) AS delivered_last,
       greatest(d.bounce_last, s.bounce_last) AS bounce_last,
       least(d.human_open_first, s.human_open_first) AS human_open_first,
       d.human_opens + coalesce(s.human_opens, 0) AS human_opens,
       d.machine_opens + coalesce(s.machine_opens, 0) AS machine_opens,
       CASE WHEN d.clicks IS NULL THEN s.clicks WHEN s.clicks IS NULL THEN d.clicks
            ELSE list_concat(s.clicks, d.clicks) END AS clicks,
       least(d.spam_first, s.spam_first) AS spam_first,
       least(d.unsub_first, s.unsub_first) AS unsub_first
FROM _delta d LEFT JOIN message_state s USING (message_id)
"""

# Labels for the messages in _touched. {p_*} are policy numbers rendered as SQL literals.
_LABEL_SELECT = """
WITH m AS (
    SELECT m.* FROM messages m SEMI JOIN _touched t USING (message_id)
), s AS (
    SELECT s.* FROM message_state s SEMI JOIN _touched t USING (message_id)
), click_rows AS (
    SELECT s.message_id, c.ts, c.url, m.tracked_links, s.delivered_first
    FROM s JOIN m USING (message_id), unnest(s.clicks) AS u(c)
), click_seconds AS (
    SELECT message_id, date_trunc('second', ts) AS sec, count(DISTINCT url) AS urls
    FROM click_rows GROUP BY ALL
), clicks AS (
    SELECT r.message_id,
           count(*) FILTER (WHERE NOT scanner) AS human_clicks,
           count(*) FILTER (WHERE scanner) AS scanner_clicks,
           min(r.ts) FILTER (WHERE NOT scanner) AS human_click_first
    FROM (
        SELECT r.*,
               (r.delivered_first IS NOT NULL
                AND r.ts < r.delivered_first + to_microseconds({p_scanner_us}))
               OR (r.tracked_links >= 2 AND cs.urls >= r.tracked_links) AS scanner
        FROM click_rows r
        JOIN click_seconds cs ON cs.message_id = r.message_id AND cs.sec = date_trunc('second', r.ts)
    ) r
    GROUP BY r.message_id
), crm AS (
    SELECT message_id,
           min(occurred_at) FILTER (type = 'meeting_booked') AS booked_at,
           min(occurred_at) FILTER (type = 'meeting_completed') AS completed_at,
           max(occurred_at) FILTER (type = 'deal_closed') AS closed_last,
           max(occurred_at) FILTER (type = 'deal_lost') AS lost_last,
           max(deal_value) FILTER (type = 'deal_closed') AS closed_value,
           max(occurred_at) AS crm_last
    FROM crm_events SEMI JOIN _touched t USING (message_id)
    GROUP BY message_id
), rep AS (
    SELECT message_id,
           count(*) FILTER (NOT is_auto_reply) AS human_replies,
           count(*) FILTER (is_auto_reply) AS auto_replies,
           arg_min(sentiment, received_at) FILTER (NOT is_auto_reply) AS first_sentiment,
           bool_or(sentiment = 'positive' AND NOT is_auto_reply) AS any_positive,
           max(received_at) AS reply_last
    FROM reply_intents SEMI JOIN _touched t USING (message_id)
    GROUP BY message_id
), flags AS (
    SELECT m.message_id, m.organization_id, m.campaign_id, m.lead_id, m.model_id, m.model_version,
           m.ab_group, m.task_type, m.sent_at,
           s.delivered_last IS NOT NULL
               AND (s.bounce_last IS NULL OR s.bounce_last < s.delivered_last) AS delivered,
           s.bounce_last IS NOT NULL
               AND (s.delivered_last IS NULL OR s.bounce_last >= s.delivered_last) AS bounced,
           s.human_open_first IS NOT NULL AS opened,
           coalesce(k.human_clicks, 0) > 0 AS clicked,
           coalesce(r.human_replies, 0) > 0 AS replied,
           r.first_sentiment AS reply_sentiment,
           coalesce(r.any_positive, false) AS positive_reply,
           c.booked_at IS NOT NULL OR c.completed_at IS NOT NULL AS meeting_booked,
           c.completed_at IS NOT NULL AS meeting_completed,
           c.closed_last IS NOT NULL AND (c.lost_last IS NULL OR c.closed_last > c.lost_last) AS deal_closed,
           c.lost_last IS NOT NULL AND (c.closed_last IS NULL OR c.lost_last >= c.closed_last) AS deal_lost,
           c.closed_value,
           s.unsub_first IS NOT NULL AS unsubscribed,
           s.spam_first IS NOT NULL AS spam_reported,
           coalesce(s.machine_opens, 0) AS machine_opens,
           coalesce(k.scanner_clicks, 0) AS scanner_clicks,
           coalesce(r.auto_replies, 0) AS auto_replies,
           greatest(s.delivered_last, s.bounce_last, s.human_open_first, k.human_click_first,
                    s.spam_first, s.unsub_first, c.crm_last, r.reply_last) AS last_event_at
    FROM m
    LEFT JOIN s USING (message_id)
    LEFT JOIN clicks k USING (message_id)
    LEFT JOIN crm c USING (message_id)
    LEFT JOIN rep r USING (message_id)
), staged AS (
    SELECT *,
           CASE WHEN deal_closed THEN 'deal_closed'
                WHEN meeting_completed THEN 'meeting_completed'
                WHEN meeting_booked THEN 'meeting_booked'
                WHEN positive_reply THEN 'positive_reply'
                WHEN replied THEN 'replied'
                WHEN clicked THEN 'clicked'
                WHEN opened THEN 'opened'
                WHEN delivered THEN 'delivered'
                WHEN bounced THEN 'bounced'
                ELSE 'sent' END AS stage,
           CASE WHEN deal_closed THEN coalesce(closed_value, 0) END AS deal_value_out,
           -- a spam report always counts against the message; an unsubscribe does unless
           -- the lead also booked a meeting or closed a deal (see docs/labelling.md)
           spam_reported OR (unsubscribed AND NOT (meeting_booked OR deal_closed)) AS negative
    FROM flags
)
SELECT message_id, organization_id, campaign_id, lead_id, model_id, model_version, ab_group,
       task_type, sent_at, delivered, bounced, opened, clicked, replied, reply_sentiment,
       positive_reply, meeting_booked, meeting_completed, deal_closed, deal_value_out AS deal_value,
       deal_lost, unsubscribed, spam_reported, machine_opens, scanner_clicks, auto_replies, stage,
       round(CASE WHEN negative THEN {p_negative}
                  ELSE least(1.0, greatest(0.0,
                       CASE stage {p_stage_cases} END
                       + CASE WHEN stage = 'deal_closed'
                              THEN {p_bonus} * least(greatest(deal_value_out, 0), {p_cap}) / {p_cap}
                              ELSE 0 END)) END, 6) AS quality_score,
       deal_closed OR deal_lost OR bounced OR spam_reported OR unsubscribed AS is_terminal,
       false AS is_mature,
       last_event_at,
       now()::TIMESTAMP AS labelled_at,
       {run_id} AS label_run_id
FROM staged
"""


def _num(value: float) -> str:
    return repr(float(value))


def render_label_sql(policy: LabelPolicy, run_id: int) -> str:
    cases = " ".join(f"WHEN '{stage}' THEN {_num(score)}" for stage, score in policy.stage_scores.items())
    return _LABEL_SELECT.format(
        p_scanner_us=int(round(policy.scanner_click_window_s * 1_000_000)),
        p_negative=_num(policy.negative_score), p_stage_cases=cases, p_bonus=_num(policy.deal_bonus),
        p_cap=_num(policy.deal_value_cap), run_id=int(run_id))


@dataclass
class LabelRunResult:
    label_run_id: int
    as_of: datetime
    full_relabel: bool
    policy_changed: bool
    from_batch: int
    to_batch: int
    folded_events: int
    touched_messages: int
    maturity_changes: int
    seconds: float


def _last_run(con: duckdb.DuckDBPyConnection) -> tuple[int, int, str | None]:
    row = con.execute("SELECT label_run_id, to_batch, policy_fingerprint FROM label_runs "
                      "ORDER BY label_run_id DESC LIMIT 1").fetchone()
    return (0, 0, None) if row is None else (int(row[0]), int(row[1]), row[2])


def refresh_labels(con: duckdb.DuckDBPyConnection, policy: LabelPolicy | None = None, *,
                   as_of: datetime | None = None, full: bool = False) -> LabelRunResult:
    """Bring ``outcome_labels`` up to date with everything ingested so far."""
    policy = policy or LabelPolicy()
    as_of_utc = (as_of or datetime.now(timezone.utc))
    if as_of_utc.tzinfo is not None:
        as_of_utc = as_of_utc.astimezone(timezone.utc).replace(tzinfo=None)
    started = time.perf_counter()
    with transaction(con):
        last_run_id, last_batch, last_fingerprint = _last_run(con)
        run_id = last_run_id + 1
        to_batch = max_batch(con)
        fingerprint = policy.fingerprint()
        policy_changed = last_fingerprint is not None and last_fingerprint != fingerprint
        full = full or last_fingerprint is None
        from_batch = 0 if full else last_batch
        if full:
            con.execute("DELETE FROM message_state")
            con.execute("INSERT INTO message_state " + _FOLD_SELECT.format(
                where=f"message_id IS NOT NULL AND batch_id <= {to_batch}"))
            folded = con.execute("SELECT coalesce(sum(events), 0) FROM message_state").fetchone()[0]
        else:
            con.execute("CREATE OR REPLACE TEMP TABLE _delta AS " + _FOLD_SELECT.format(
                where=f"batch_id > {from_batch} AND batch_id <= {to_batch} AND message_id IS NOT NULL"))
            folded = con.execute("SELECT coalesce(sum(events), 0) FROM _delta").fetchone()[0]
            con.execute(_MERGE_STATE)
            con.execute("DELETE FROM message_state WHERE message_id IN (SELECT message_id FROM _delta)")
            con.execute("INSERT INTO message_state SELECT * FROM _merged")
        if full or policy_changed:
            con.execute("CREATE OR REPLACE TEMP TABLE _touched AS SELECT message_id FROM messages")
        else:
            rng = f"> {from_batch} AND {{col}} <= {to_batch}"
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE _touched AS
                SELECT message_id FROM _delta
                UNION SELECT message_id FROM messages WHERE batch_id {rng.format(col='batch_id')}
                UNION SELECT message_id FROM crm_events
                      WHERE message_id IS NOT NULL AND attributed_batch_id {rng.format(col='attributed_batch_id')}
                UNION SELECT message_id FROM reply_intents
                      WHERE message_id IS NOT NULL AND batch_id {rng.format(col='batch_id')}
            """)
        touched = con.execute("SELECT count(*) FROM _touched").fetchone()[0]
        if full or policy_changed:
            con.execute("DELETE FROM outcome_labels")
        else:
            con.execute("DELETE FROM outcome_labels WHERE message_id IN (SELECT message_id FROM _touched)")
        con.execute("INSERT INTO outcome_labels " + render_label_sql(policy, run_id))
        cutoff = f"TIMESTAMP '{as_of_utc.isoformat(sep=' ')}' - to_days({int(policy.maturity_days)})"
        maturity_changes = con.execute(f"""
            UPDATE outcome_labels SET is_mature = (is_terminal OR sent_at <= {cutoff})
            WHERE is_mature IS DISTINCT FROM (is_terminal OR sent_at <= {cutoff})
        """).fetchone()[0]
        seconds = time.perf_counter() - started
        con.execute("INSERT INTO label_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?)",
                    [run_id, as_of_utc, from_batch, to_batch, full, fingerprint,
                     json.dumps(policy.model_dump()), touched, folded, seconds])
        for temp in ("_delta", "_merged", "_touched"):
            con.execute(f"DROP TABLE IF EXISTS {temp}")
    return LabelRunResult(run_id, as_of_utc, full, policy_changed, from_batch, to_batch, int(folded),
                          int(touched), int(maturity_changes), time.perf_counter() - started)
