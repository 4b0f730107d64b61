"""Outcome labelling in SQL, incremental in the volume of new events.

Two steps, both in DuckDB:

1. **Fold** email events with ``batch_id`` above the last folded batch into
   ``message_state``, a per-message aggregate whose columns all merge with
   least/greatest/bit_or/+. Old events are never reread (``batch_id`` is append-ordered, so
   row-group zone maps skip history).
2. **Label** the *touched* messages (new messages, new email events, newly attributed CRM
   events, newly classified replies, messages whose rows a conflicting duplicate replaced:
   their state is folded again from all their events) from ``message_state`` + ``messages`` + ``crm_events``
   + ``reply_intents``, and replace their rows in ``packed_labels`` (read through the
   ``message_labels`` and ``outcome_labels`` views). Maturity, which moves
   with the clock, is then refreshed for every label with one cheap pass over the label
   table (one row per message, no events).

A full relabel (``full=True``) rebuilds ``message_state`` from all events and labels every
message; a change of policy relabels every message from ``message_state`` (no event scan).
The rules are documented in docs/labelling.md and mirrored by core/label_policy.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb

from flywheel_pipeline.core.label_policy import STAGES, LabelPolicy
from flywheel_pipeline.warehouse.label_layout import (TERMINAL_FLAGS, TERMINAL_MASK, deepest_stage_sql,
                                                       pack_flags_sql)
from flywheel_pipeline.warehouse.concurrency import retry_on_conflict
from flywheel_pipeline.warehouse.schema import REBUILD_LABELS_KEY, max_batch, take_ids, transaction

# Bits of message_state.signals: human signals whose presence, not count, the labels need.
SIGNAL_BITS: dict[str, int] = {"human_open": 1, "spam_report": 2, "unsubscribe": 4}

# Event names are compared as ``'open'::sendgrid_event``: against a bare string literal DuckDB
# (1.5) casts the ENUM column to VARCHAR on every row, no longer a one-byte comparison (the fold
# took 1.02-1.25 s instead of 0.76-0.81 s at 10M events; docs/benchmarks.md). On DuckLake, where
# the column is VARCHAR, the constant folds back to a string.
# The fold: one pass over email events, one row per message. Every column merges with
# least/greatest/bit_or/+ (see _MERGE_STATE), so new events fold in without rereading old
# ones. It keeps five aggregates: with the perfect hash aggregate each aggregate over 10M
# events costs about as much as the grouping itself (docs/benchmarks.md), so presence flags
# share one bit_or and the event count is taken from the batch range instead.
_FOLD_SELECT = """
SELECT message_key,
       min(occurred_at) FILTER (event = 'delivered'::sendgrid_event) AS delivered_first,
       max(epoch_us(occurred_at) * 2 + (event <> 'delivered'::sendgrid_event)::BIGINT)
           FILTER (event IN ('delivered'::sendgrid_event, 'bounce'::sendgrid_event,
                             'dropped'::sendgrid_event)) AS status_last,
       bit_or(CASE WHEN event = 'open'::sendgrid_event AND machine_open IS NOT TRUE THEN {human_open}
                   WHEN event = 'spamreport'::sendgrid_event THEN {spam_report}
                   WHEN event IN ('unsubscribe'::sendgrid_event, 'group_unsubscribe'::sendgrid_event)
                       THEN {unsubscribe}
              END::UTINYINT) AS signals,
       count(*) FILTER (event = 'open'::sendgrid_event AND machine_open IS TRUE) AS machine_opens,
       max(occurred_at) AS last_at
FROM email_events
WHERE {where}
GROUP BY message_key
"""

_MERGE_STATE = """
CREATE OR REPLACE TEMP TABLE _merged AS
SELECT d.message_key,
       least(d.delivered_first, s.delivered_first) AS delivered_first,
       greatest(d.status_last, s.status_last) AS status_last,
       (coalesce(d.signals, 0) | coalesce(s.signals, 0))::UTINYINT AS signals,
       d.machine_opens + coalesce(s.machine_opens, 0) AS machine_opens,
       greatest(d.last_at, s.last_at) AS last_at
FROM _delta d LEFT JOIN message_state s USING (message_key)
"""

# Labels for the messages in scope: every message (full) or the keys in _touched. {scope}
# is empty or a semi-join on _touched; {state} is message_state or, in a full relabel, the
# fold just computed; {click_msgs}, {fast_clicks} and {human_clicks} are the per-message click
# shortcut (_CLICK_MSGS, _FAST_CLICKS, _HUMAN_CLICKS below); {p_*} are policy numbers
# rendered as SQL literals.
_LABEL_SELECT = """
WITH m AS NOT MATERIALIZED (
    SELECT message_key, sent_at, tracked_links FROM messages {scope}
), s AS NOT MATERIALIZED (
    SELECT * FROM {state} {scope}
), click_rows AS MATERIALIZED (
    -- click detail is read from the events (clicks are a small share of them), so the scanner
    -- rules see the delivery time even when the click arrived before the delivered event;
    -- read once for its two uses (scanning decodes the whole url column: 0.1 s at 10M events)
    {click_rows}
), click_msgs AS (
    {click_msgs}
), slow_keys AS (
    SELECT message_key FROM click_msgs WHERE NOT ({fast_clicks})
), slow_rows AS (
    SELECT r.*, date_trunc('second', r.ts) AS sec FROM click_rows r SEMI JOIN slow_keys USING (message_key)
), click_links AS (
    -- the general case, per message, second and link: how many clicks, and how many came
    -- sooner than the scanner window after the first delivery
    SELECT r.message_key, r.sec, r.url, count(*) AS clicks,
           count(*) FILTER (s.delivered_first IS NOT NULL
                            AND r.ts < s.delivered_first + to_microseconds({p_scanner_us})) AS early
    FROM slow_rows r LEFT JOIN (SELECT * FROM s SEMI JOIN slow_keys USING (message_key)) s USING (message_key)
    GROUP BY r.message_key, r.sec, r.url
), click_seconds AS (
    -- urls: the distinct links clicked in that second (a click without a URL is no link)
    SELECT message_key, sec, sum(clicks) AS clicks, count(url) AS urls, sum(early) AS early
    FROM click_links GROUP BY message_key, sec
), slow_clicks AS (
    -- a second in which every tracked link (at least 2) was clicked is a scanner burst
    SELECT c.message_key,
           sum(CASE WHEN coalesce(m.tracked_links >= 2 AND c.urls >= m.tracked_links, false) THEN 0
                    ELSE c.clicks - c.early END) AS human_clicks
    FROM click_seconds c LEFT JOIN (SELECT * FROM m SEMI JOIN slow_keys USING (message_key)) m USING (message_key)
    GROUP BY c.message_key
), clicks AS (
    SELECT c.*, h.human_clicks AS slow_human_clicks
    FROM click_msgs c LEFT JOIN slow_clicks h USING (message_key)
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
), side AS (
    -- everything but the email-event state, for the few messages that have any: one join
    -- of the small sides here instead of three joins on every message below
    SELECT * FROM clicks FULL JOIN crm USING (message_key) FULL JOIN rep USING (message_key)
), flags AS (
    SELECT m.message_key, m.sent_at,
           -- the latest delivery-status event decides (a bounce wins a tie)
           coalesce(s.status_last % 2 = 0, false) AS delivered,
           coalesce(s.status_last % 2 = 1, false) AS bounced,
           coalesce(s.signals & {sig_human_open} <> 0, false) AS opened,
           coalesce({human_clicks}, 0) AS human_clicks,
           coalesce(x.human_replies, 0) > 0 AS replied,
           x.first_sentiment AS reply_sentiment,
           coalesce(x.any_positive, false) AS positive_reply,
           x.booked_at IS NOT NULL OR x.completed_at IS NOT NULL AS meeting_booked,
           x.completed_at IS NOT NULL AS meeting_completed,
           coalesce(x.closed_last IS NOT NULL AND (x.lost_last IS NULL OR x.closed_last > x.lost_last),
                    false) AS deal_closed,
           coalesce(x.lost_last IS NOT NULL AND (x.closed_last IS NULL OR x.lost_last >= x.closed_last),
                    false) AS deal_lost,
           x.closed_value,
           coalesce(s.signals & {sig_unsubscribe} <> 0, false) AS unsubscribed,
           coalesce(s.signals & {sig_spam_report} <> 0, false) AS spam_reported,
           coalesce(s.machine_opens, 0)::INTEGER AS machine_opens,
           coalesce(x.clicks, 0) AS all_clicks,
           coalesce(x.auto_replies, 0)::INTEGER AS auto_replies,
           greatest(s.last_at, x.crm_last, x.reply_last) AS last_event_at
    FROM m
    LEFT JOIN s USING (message_key)
    LEFT JOIN side x USING (message_key)
), counted AS (
    SELECT *, human_clicks > 0 AS clicked, (all_clicks - human_clicks)::INTEGER AS scanner_clicks FROM flags
), staged AS (
    SELECT *,
           {stage_no} AS stage_no,
           -- a spam report always counts against the message; an unsubscribe does unless
           -- the lead also booked a meeting or closed a deal (see docs/labelling.md)
           spam_reported OR (unsubscribed AND NOT (meeting_booked OR deal_closed)) AS negative,
           {terminal} AS terminal
    FROM counted
)
SELECT message_key, sent_at, {pack_flags} AS flags, reply_sentiment,
       CASE WHEN deal_closed THEN coalesce(closed_value, 0) END AS deal_value,
       machine_opens, scanner_clicks, auto_replies,
       round(CASE WHEN negative THEN {p_negative}
                  ELSE least(1.0, greatest(0.0,
                       [{p_stage_scores}][stage_no + 1]
                       + CASE WHEN deal_closed
                              THEN {p_bonus} * least(greatest(coalesce(closed_value, 0), 0), {p_cap}) / {p_cap}
                              ELSE 0 END)) END, 6) AS quality_score,
       terminal OR sent_at <= {p_cutoff} AS is_mature,
       last_event_at,
       {run_id} AS label_run_id
FROM staged
"""

_SCOPE = "SEMI JOIN _touched USING (message_key)"

# The clicks (message_key, ts, url) of the messages in {scope}.
_CLICK_ROWS = ("SELECT e.message_key, e.occurred_at AS ts, e.url FROM email_events e {scope} "
               "WHERE e.event = 'click'::sendgrid_event")

# Per message, from its clicks (ts, url): enough to apply both scanner rules to most messages
# (see _FAST_CLICKS). link_buckets: how many of 64 hash buckets the clicked URLs fall in, a
# lower bound of the distinct links clicked, equal to it when it equals the URL clicks.
_CLICK_MSGS = """SELECT message_key, count(*) AS clicks, count(url) AS with_url, min(ts) AS first_click_at,
           max(ts) AS last_click_at,
           coalesce(bit_count(bit_or(1::UBIGINT << (hash(url) % 64)::INTEGER) FILTER (url IS NOT NULL)), 0)
               AS link_buckets
    FROM {clicks} GROUP BY message_key"""

# Most messages are classified from their per-message click aggregates (click_msgs), in the
# label projection where the delivery time and the tracked links are at hand, without the
# per-second analysis: a message with one click; with two clicks, which cannot be a burst in
# different seconds and are one in the same second when their links differ and the message
# tracks exactly two; and a message whose clicks all came at one instant on distinct links (a
# scanner's burst: SendGrid's timestamps are whole seconds), which is a burst when it clicked
# every tracked link, else all or none of its clicks fall in the scanner window. Distinct
# links are known exactly when every URL click has its own hash bucket (link_buckets =
# with_url); otherwise, and for three or more clicks spread over time, the per-second
# analysis decides. Both ways give the same labels (test_labels.py compares them).
_FAST_CLICKS = ("clicks = 1 OR (clicks = 2 AND (date_trunc('second', first_click_at) <> "
                "date_trunc('second', last_click_at) OR link_buckets = with_url)) "
                "OR (first_click_at = last_click_at AND link_buckets = with_url)")
_NO_FAST_CLICKS = "false"
# Within the shortcut: a burst needs one second and every tracked link (at least 2); the early
# clicks are the first and, of the others (all at the last click's time when there are more
# than two), those before the window's end.
_HUMAN_CLICKS = """CASE
    WHEN x.slow_human_clicks IS NOT NULL THEN x.slow_human_clicks
    WHEN m.tracked_links >= 2 AND x.with_url >= m.tracked_links AND x.link_buckets = x.with_url
         AND date_trunc('second', x.first_click_at) = date_trunc('second', x.last_click_at) THEN 0
    ELSE x.clicks - coalesce(x.first_click_at < s.delivered_first + to_microseconds({p_scanner_us}), false)::INTEGER
         - (x.clicks - 1) * coalesce(x.last_click_at < s.delivered_first + to_microseconds({p_scanner_us}), false)::INTEGER
    END"""


def render_fold_sql(*, after_batch: int, up_to_batch: int) -> str:
    """The per-message fold of the email events with ``after_batch < batch_id <= up_to_batch``."""
    return _FOLD_SELECT.format(where=f"batch_id > {int(after_batch)} AND batch_id <= {int(up_to_batch)}",
                               **SIGNAL_BITS)


def _num(value: float) -> str:
    return repr(float(value))


def _cutoff_sql(policy: LabelPolicy, as_of: datetime) -> str:
    return f"(TIMESTAMP '{as_of.isoformat(sep=' ')}' - to_days({int(policy.maturity_days)}))"


def render_label_sql(policy: LabelPolicy, run_id: int, as_of: datetime, *, scoped: bool,
                     state: str = "message_state", fast_clicks: bool = True) -> str:
    """The label rows (packed_labels' columns) of every message, or of those in ``_touched``.

    ``fast_clicks=False`` sends every clicked message through the per-second scanner analysis
    (for tests that compare it with the per-message shortcut)."""
    scanner_us = int(round(policy.scanner_click_window_s * 1_000_000))
    return _LABEL_SELECT.format(
        click_rows=_CLICK_ROWS.format(scope=_SCOPE if scoped else ""),
        click_msgs=_CLICK_MSGS.format(clicks="click_rows"),
        fast_clicks=_FAST_CLICKS if fast_clicks else _NO_FAST_CLICKS,
        human_clicks=_HUMAN_CLICKS.format(p_scanner_us=scanner_us),
        scope=_SCOPE if scoped else "", state=state,
        scope_c="SEMI JOIN _touched t ON t.message_key = c.message_key" if scoped else "",
        scope_r="SEMI JOIN _touched t ON t.message_key = r.message_key" if scoped else "",
        sig_human_open=SIGNAL_BITS["human_open"], sig_spam_report=SIGNAL_BITS["spam_report"],
        sig_unsubscribe=SIGNAL_BITS["unsubscribe"],
        stage_no=deepest_stage_sql(lambda name: name), pack_flags=pack_flags_sql(),
        terminal=" OR ".join(TERMINAL_FLAGS),
        p_scanner_us=scanner_us,
        p_negative=_num(policy.negative_score),
        p_stage_scores=", ".join(_num(policy.stage_scores[stage]) for stage in STAGES),
        p_bonus=_num(policy.deal_bonus), p_cap=_num(policy.deal_value_cap),
        p_cutoff=_cutoff_sql(policy, as_of), run_id=int(run_id))


def count_click_paths(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """How many clicked messages the label query classifies from per-message aggregates
    (``shortcut``) and how many through the per-second analysis (``per_second``)."""
    clicks = f"({_CLICK_ROWS.format(scope='')})"
    row = con.execute(f"SELECT count(*) FILTER ({_FAST_CLICKS}), count(*) FILTER (NOT ({_FAST_CLICKS})) "
                      f"FROM ({_CLICK_MSGS.format(clicks=clicks)})").fetchone()
    return {"shortcut": int(row[0]), "per_second": int(row[1])}


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


def _rebuild_required(con: duckdb.DuckDBPyConnection) -> bool:
    """A schema migration that replaced the label tables asks for one full relabel."""
    return con.execute(f"SELECT count(*) FROM schema_info WHERE key = '{REBUILD_LABELS_KEY}'").fetchone()[0] > 0


# A perfect hash aggregate (one slot per key value, no hashing or probing) folds dense message
# keys faster than DuckDB's hash aggregate: 1M keys in 0.35 s instead of 0.44 s, 10M keys in
# 5.8-6.0 s instead of 7.7-8.4 s (docs/benchmarks.md). It builds one table over the whole key
# range per thread plus one it combines them into, allocated outside DuckDB's buffer manager: on
# top of memory_limit, never spilled. So it is used only while (threads + 1) x range x slot size
# stays within a share of memory_limit. A slot of the fold's five aggregates takes about 62
# bytes (DuckDB 1.5.5: 2^22 slots, 1/2/4 threads peaked 581/841/1,362 MB; 2 threads x 2^24 slots
# 4.1 GB where the hash aggregate peaked at 3.1 GB, 10M messages' 99M events).
PERFECT_HASH_SLOT_BYTES = 64
PERFECT_HASH_MEMORY_SHARE = 0.25
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([KMGTP]?i?B|bytes)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"bytes": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}


def memory_limit_bytes(con: duckdb.DuckDBPyConnection) -> int | None:
    """DuckDB's memory_limit of the connection in bytes (it reports e.g. ``18.8 GiB``), at most
    the machine's memory (no limit reads as 16383.9 PiB); None when it cannot be read."""
    text = str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])
    match = _SIZE.match(text)
    if match is None:
        return None
    limit = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limit = min(limit, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return limit


@contextlib.contextmanager
def dense_key_grouping(con: duckdb.DuckDBPyConnection, *, enabled: bool) -> Iterator[None]:
    """Let the fold group by message_key with a perfect hash table when the key range is
    small enough for the memory limit. The setting is put back when the block succeeds; after a
    failure inside a transaction DuckDB refuses every statement until ROLLBACK, so the caller puts
    it back after the transaction (refresh_labels) and the block's own error is what it sees."""
    low, high = (con.execute("SELECT min(message_key), max(message_key) FROM message_keys").fetchone()
                 if enabled else (None, None))
    limit = memory_limit_bytes(con) if high is not None else None
    if high is None or limit is None:
        yield
        return
    threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    # the key range plus one slot for NULL, in bits (as DuckDB sizes the table)
    bits = (int(high) - int(low) + 2).bit_length()
    # DuckDB takes at most 32 bits (and refuses ranges of 2^31 or more)
    if bits > 31 or (threads + 1) * (1 << bits) * PERFECT_HASH_SLOT_BYTES > PERFECT_HASH_MEMORY_SHARE * limit:
        yield
        return
    previous = int(con.execute("SELECT current_setting('perfect_ht_threshold')").fetchone()[0])
    con.execute(f"SET perfect_ht_threshold = {max(bits, previous)}")
    yield
    con.execute(f"SET perfect_ht_threshold = {previous}")


def _refold(con: duckdb.DuckDBPyConnection, from_batch: int, to_batch: int) -> None:
    """Messages whose loaded rows a batch in range replaced (warehouse/ingest.py: a conflicting
    duplicate that sorts first): their state is folded again from all their events, since the
    replaced event cannot be taken out of the merged aggregates. Usually none."""
    keys = f"SELECT message_key FROM message_refolds WHERE batch_id > {int(from_batch)} AND batch_id <= {int(to_batch)}"
    if not con.execute(f"SELECT count(*) FROM ({keys})").fetchone()[0]:
        return
    con.execute(f"DELETE FROM message_state WHERE message_key IN ({keys})")
    fold = _FOLD_SELECT.format(where=f"batch_id <= {int(to_batch)} AND message_key IN ({keys})", **SIGNAL_BITS)
    con.execute(f"INSERT INTO message_state {fold}")


def refresh_labels(con: duckdb.DuckDBPyConnection, policy: LabelPolicy | None = None, *,
                   as_of: datetime | None = None, full: bool = False) -> LabelRunResult:
    """Bring ``outcome_labels`` up to date with everything ingested so far. A label run that
    conflicts with another process's commit (DuckLake) is run again from the start: each batch
    is folded into message_state exactly once (see docs/scaling.md)."""
    threshold = int(con.execute("SELECT current_setting('perfect_ht_threshold')").fetchone()[0])
    try:
        return retry_on_conflict(lambda: _refresh_labels_once(con, policy, as_of=as_of, full=full), "labelling")
    finally:  # after the commit or rollback: a failed fold leaves dense_key_grouping's setting raised
        # (inside a caller's transaction that a failure aborted, DuckDB refuses it: the error in
        # flight is the one to see)
        with contextlib.suppress(duckdb.TransactionException):
            con.execute(f"SET perfect_ht_threshold = {threshold}")


def _refresh_labels_once(con: duckdb.DuckDBPyConnection, policy: LabelPolicy | None = None, *,
                         as_of: datetime | None = None, full: bool = False) -> LabelRunResult:
    policy = policy or LabelPolicy()
    as_of_utc = (as_of or datetime.now(timezone.utc))
    if as_of_utc.tzinfo is not None:
        as_of_utc = as_of_utc.astimezone(timezone.utc).replace(tzinfo=None)
    started = time.perf_counter()
    with transaction(con):
        _, last_batch, last_fingerprint = _last_run(con)
        # the run's id from warehouse_counters: two label runs at once conflict, one is retried
        run_id = take_ids(con, "label_run_id")
        to_batch = max_batch(con)
        fingerprint = policy.fingerprint()
        policy_changed = last_fingerprint is not None and last_fingerprint != fingerprint
        rebuild = _rebuild_required(con)
        full = full or last_fingerprint is None or rebuild
        from_batch = 0 if full else last_batch
        folded = con.execute(f"SELECT count(*) FROM email_events WHERE batch_id > {from_batch} "
                             f"AND batch_id <= {to_batch}").fetchone()[0]
        with dense_key_grouping(con, enabled=full):
            con.execute("CREATE OR REPLACE TEMP TABLE _delta AS "
                        + render_fold_sql(after_batch=from_batch, up_to_batch=to_batch))
        if full:
            con.execute("DELETE FROM message_state")
            con.execute("INSERT INTO message_state SELECT * FROM _delta")
        else:
            con.execute(_MERGE_STATE)
            con.execute("DELETE FROM message_state WHERE message_key IN (SELECT message_key FROM _delta)")
            con.execute("INSERT INTO message_state SELECT * FROM _merged")
            _refold(con, from_batch, to_batch)
        relabel_all = full or policy_changed
        if relabel_all:
            touched = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            con.execute("DELETE FROM packed_labels")
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
                UNION SELECT message_key FROM message_refolds WHERE batch_id {rng.format(col='batch_id')}
            """)
            touched = con.execute("SELECT count(*) FROM _touched").fetchone()[0]
            con.execute("DELETE FROM packed_labels WHERE message_key IN (SELECT message_key FROM _touched)")
        # A full relabel reads the fold it just computed (a temporary table) rather than the
        # state table it was copied into.
        con.execute("INSERT INTO packed_labels " + render_label_sql(
            policy, run_id, as_of_utc, scoped=not relabel_all, state="_delta" if full else "message_state"))
        # maturity moves with the clock: one pass over the labels, no events
        cutoff = _cutoff_sql(policy, as_of_utc)
        mature = f"(flags & {TERMINAL_MASK} <> 0 OR sent_at <= {cutoff})"
        maturity_changes = con.execute(
            f"UPDATE packed_labels SET is_mature = {mature} WHERE is_mature IS DISTINCT FROM {mature}"
        ).fetchone()[0]
        if rebuild:
            con.execute(f"DELETE FROM schema_info WHERE key = '{REBUILD_LABELS_KEY}'")
        seconds = time.perf_counter() - started
        con.execute("INSERT INTO label_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?)",
                    [run_id, as_of_utc, from_batch, to_batch, full, fingerprint,
                     json.dumps(policy.model_dump()), touched, folded, seconds])
        for temp in ("_delta", "_merged", "_touched"):
            con.execute(f"DROP TABLE IF EXISTS {temp}")
    return LabelRunResult(run_id, as_of_utc, full, policy_changed, from_batch, to_batch, int(folded),
                          int(touched), int(maturity_changes), time.perf_counter() - started)
