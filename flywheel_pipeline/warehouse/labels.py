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
SELECT message_key,
       count(*) AS events,
       min(occurred_at) FILTER (event = 'delivered') AS delivered_first,
       max(epoch_us(occurred_at) * 2 + (event <> 'delivered')::BIGINT)
           FILTER (event IN ('delivered', 'bounce', 'dropped')) AS status_last,
       min(occurred_at) FILTER (event = 'open' AND machine_open IS NOT TRUE) AS human_open_first,
       count(*) FILTER (event = 'open' AND machine_open IS TRUE) AS machine_opens,
       min(occurred_at) FILTER (event = 'spamreport') AS spam_first,
       min(occurred_at) FILTER (event IN ('unsubscribe', 'group_unsubscribe')) AS unsub_first
FROM email_events
WHERE {where}
GROUP BY message_key
"""

_MERGE_STATE = """
CREATE OR REPLACE TEMP TABLE _merged AS
SELECT d.message_key,
       d.events + coalesce(s.events, 0) AS events,
       least(d.delivered_first, s.delivered_first) AS delivered_first,
       greatest(d.status_last, s.status_last) AS status_last,
       least(d.human_open_first, s.human_open_first) AS human_open_first,
       d.machine_opens + coalesce(s.machine_opens, 0) AS machine_opens,
       least(d.spam_first, s.spam_first) AS spam_first,
       least(d.unsub_first, s.unsub_first) AS unsub_first
FROM _delta d LEFT JOIN message_state s USING (message_key)
"""

# Labels for the messages in scope: every message (full) or the keys in _touched. {scope}
# is empty or a semi-join on _touched; {p_*} are policy numbers rendered as SQL literals.
_LABEL_SELECT = """
WITH m AS NOT MATERIALIZED (
    SELECT message_key, sent_at, tracked_links FROM messages {scope}
), s AS NOT MATERIALIZED (
    SELECT * FROM message_state {scope}
), click_rows AS (
    -- click detail is read from the events (clicks are a small share of them), so the scanner
    -- rules see the delivery time even when the click arrived before the delivered event
    SELECT e.message_key, e.occurred_at AS ts, e.url
    FROM email_events e {scope}
    WHERE e.event = 'click'
), click_seconds AS (
    SELECT message_key, date_trunc('second', ts) AS sec, count(DISTINCT url) AS urls
    FROM click_rows GROUP BY ALL
), clicks AS (
    SELECT message_key,
           count(*) FILTER (WHERE NOT scanner) AS human_clicks,
           count(*) FILTER (WHERE scanner) AS scanner_clicks,
           min(ts) FILTER (WHERE NOT scanner) AS human_click_first
    FROM (
        SELECT r.message_key, r.ts,
               coalesce(s.delivered_first IS NOT NULL
                        AND r.ts < s.delivered_first + to_microseconds({p_scanner_us}), false)
               OR coalesce(m.tracked_links >= 2 AND cs.urls >= m.tracked_links, false) AS scanner
        FROM click_rows r
        JOIN click_seconds cs ON cs.message_key = r.message_key AND cs.sec = date_trunc('second', r.ts)
        LEFT JOIN s ON s.message_key = r.message_key
        LEFT JOIN m ON m.message_key = r.message_key
    )
    GROUP BY message_key
), crm AS (
    SELECT c.message_key,
           min(occurred_at) FILTER (type = 'meeting_booked') AS booked_at,
           min(occurred_at) FILTER (type = 'meeting_completed') AS completed_at,
           max(occurred_at) FILTER (type = 'deal_closed') AS closed_last,
           max(occurred_at) FILTER (type = 'deal_lost') AS lost_last,
           max(deal_value) FILTER (type = 'deal_closed') AS closed_value,
           max(occurred_at) AS crm_last
    FROM crm_events c {scope_c}
    WHERE c.message_key IS NOT NULL
    GROUP BY c.message_key
), rep AS (
    SELECT r.message_key,
           count(*) FILTER (NOT is_auto_reply) AS human_replies,
           count(*) FILTER (is_auto_reply) AS auto_replies,
           arg_min(sentiment, received_at) FILTER (NOT is_auto_reply) AS first_sentiment,
           bool_or(sentiment = 'positive' AND NOT is_auto_reply) AS any_positive,
           max(received_at) AS reply_last
    FROM reply_intents r {scope_r}
    WHERE r.message_key IS NOT NULL
    GROUP BY r.message_key
), flags AS (
    SELECT m.message_key, m.sent_at,
           -- the latest delivery-status event decides (a bounce wins a tie)
           coalesce(s.status_last % 2 = 0, false) AS delivered,
           coalesce(s.status_last % 2 = 1, false) AS bounced,
           s.human_open_first IS NOT NULL AS opened,
           coalesce(k.human_clicks, 0) > 0 AS clicked,
           coalesce(r.human_replies, 0) > 0 AS replied,
           r.first_sentiment AS reply_sentiment,
           coalesce(r.any_positive, false) AS positive_reply,
           c.booked_at IS NOT NULL OR c.completed_at IS NOT NULL AS meeting_booked,
           c.completed_at IS NOT NULL AS meeting_completed,
           coalesce(c.closed_last IS NOT NULL AND (c.lost_last IS NULL OR c.closed_last > c.lost_last),
                    false) AS deal_closed,
           coalesce(c.lost_last IS NOT NULL AND (c.closed_last IS NULL OR c.lost_last >= c.closed_last),
                    false) AS deal_lost,
           c.closed_value,
           s.unsub_first IS NOT NULL AS unsubscribed,
           s.spam_first IS NOT NULL AS spam_reported,
           coalesce(s.machine_opens, 0) AS machine_opens,
           coalesce(k.scanner_clicks, 0) AS scanner_clicks,
           coalesce(r.auto_replies, 0) AS auto_replies,
           greatest(make_timestamp(s.status_last // 2), s.human_open_first, k.human_click_first,
                    s.spam_first, s.unsub_first, c.crm_last, r.reply_last) AS last_event_at
    FROM m
    LEFT JOIN s USING (message_key)
    LEFT JOIN clicks k USING (message_key)
    LEFT JOIN crm c USING (message_key)
    LEFT JOIN rep r USING (message_key)
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
           spam_reported OR (unsubscribed AND NOT (meeting_booked OR deal_closed)) AS negative,
           deal_closed OR deal_lost OR bounced OR spam_reported OR unsubscribed AS terminal
    FROM flags
)
SELECT message_key, sent_at, delivered, bounced, opened, clicked, replied, reply_sentiment,
       positive_reply, meeting_booked, meeting_completed, deal_closed, deal_value_out AS deal_value,
       deal_lost, unsubscribed, spam_reported, machine_opens, scanner_clicks, auto_replies, stage,
       round(CASE WHEN negative THEN {p_negative}
                  ELSE least(1.0, greatest(0.0,
                       CASE stage {p_stage_cases} END
                       + CASE WHEN stage = 'deal_closed'
                              THEN {p_bonus} * least(greatest(deal_value_out, 0), {p_cap}) / {p_cap}
                              ELSE 0 END)) END, 6) AS quality_score,
       terminal AS is_terminal,
       terminal OR sent_at <= {p_cutoff} AS is_mature,
       last_event_at,
       {run_id} AS label_run_id
FROM staged
"""

_SCOPE = "SEMI JOIN _touched USING (message_key)"


def render_fold_sql(*, after_batch: int, up_to_batch: int) -> str:
    """The per-message fold of the email events with ``after_batch < batch_id <= up_to_batch``."""
    return _FOLD_SELECT.format(where=f"batch_id > {int(after_batch)} AND batch_id <= {int(up_to_batch)}")


def _num(value: float) -> str:
    return repr(float(value))


def _cutoff_sql(policy: LabelPolicy, as_of: datetime) -> str:
    return f"(TIMESTAMP '{as_of.isoformat(sep=' ')}' - to_days({int(policy.maturity_days)}))"


def render_label_sql(policy: LabelPolicy, run_id: int, as_of: datetime, *, scoped: bool) -> str:
    cases = " ".join(f"WHEN '{stage}' THEN {_num(score)}" for stage, score in policy.stage_scores.items())
    return _LABEL_SELECT.format(
        scope=_SCOPE if scoped else "",
        scope_c="SEMI JOIN _touched t ON t.message_key = c.message_key" if scoped else "",
        scope_r="SEMI JOIN _touched t ON t.message_key = r.message_key" if scoped else "",
        p_scanner_us=int(round(policy.scanner_click_window_s * 1_000_000)),
        p_negative=_num(policy.negative_score), p_stage_cases=cases, p_bonus=_num(policy.deal_bonus),
        p_cap=_num(policy.deal_value_cap), p_cutoff=_cutoff_sql(policy, as_of), run_id=int(run_id))


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
            con.execute("INSERT INTO message_state " + render_fold_sql(after_batch=0, up_to_batch=to_batch))
            folded = con.execute("SELECT coalesce(sum(events), 0) FROM message_state").fetchone()[0]
        else:
            con.execute("CREATE OR REPLACE TEMP TABLE _delta AS "
                        + render_fold_sql(after_batch=from_batch, up_to_batch=to_batch))
            folded = con.execute("SELECT coalesce(sum(events), 0) FROM _delta").fetchone()[0]
            con.execute(_MERGE_STATE)
            con.execute("DELETE FROM message_state WHERE message_key IN (SELECT message_key FROM _delta)")
            con.execute("INSERT INTO message_state SELECT * FROM _merged")
        relabel_all = full or policy_changed
        if relabel_all:
            touched = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            con.execute("DELETE FROM message_labels")
        else:
            rng = f"> {from_batch} AND {{col}} <= {to_batch}"
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE _touched AS
                SELECT message_key FROM _delta
                UNION SELECT message_key FROM messages WHERE batch_id {rng.format(col='batch_id')}
                UNION SELECT message_key FROM crm_events
                      WHERE message_key IS NOT NULL AND attributed_batch_id {rng.format(col='attributed_batch_id')}
                UNION SELECT message_key FROM reply_intents
                      WHERE message_key IS NOT NULL AND batch_id {rng.format(col='batch_id')}
            """)
            touched = con.execute("SELECT count(*) FROM _touched").fetchone()[0]
            con.execute("DELETE FROM message_labels WHERE message_key IN (SELECT message_key FROM _touched)")
        con.execute("INSERT INTO message_labels "
                    + render_label_sql(policy, run_id, as_of_utc, scoped=not relabel_all))
        # maturity moves with the clock: one pass over the labels, no events
        cutoff = _cutoff_sql(policy, as_of_utc)
        maturity_changes = con.execute(f"""
            UPDATE message_labels SET is_mature = (is_terminal OR sent_at <= {cutoff})
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
