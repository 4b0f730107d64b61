"""Exactly-once ingestion of landing files into the warehouse, in SQL.

For each source, files not yet listed in ``landing_files`` are read by DuckDB in chunks of
at most 256 MiB / 200 files (``read_text`` + split into numbered lines) and parsed with
DuckDB's JSON functions into temporary tables; then, inside one transaction per chunk:

* lines that cannot be parsed or attributed go to ``quarantine`` with the reason, the file
  and the line number (one bad line never fails a file);
* valid rows are de-duplicated on the source's key (first occurrence by file name and line
  wins) and inserted unless their key is loaded already (an anti-join: DuckLake has no
  keys to conflict on), so a key seen before is a duplicate;
* the file is recorded in ``landing_files``, so it is never read again.

A crash mid-chunk rolls the whole chunk back; the next run picks the files up again. A file
larger than DuckDB can read in one piece (4 GiB) is quarantined whole (line 0, with the
reason) and recorded, so it blocks nothing; split into new files, its lines load as usual.
Peak memory is 2.3-2.9x the largest chunk (benchmarks/bench_ingest.py, 0.4-1.2 GiB files).
A chunk with a file that is not UTF-8 is read as bytes instead (about 2x slower, 3.6x the
file in memory, and not above about 3 GiB: see docs/benchmarks.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.inbound_records import COMMENT_MAX_CHARS, RATER_MAX_CHARS, RATING_MAX, RATING_MIN
from flywheel_pipeline.core.inbound_records import FEEDBACK_FIELDS as FEEDBACK_RECORD_FIELDS
from flywheel_pipeline.core.costs import MAX_MESSAGE_COST_USD
from flywheel_pipeline.core.label_policy import LabelPolicy
from flywheel_pipeline.core.reply_classifier import INTENTS, SENTIMENTS
from flywheel_pipeline.core.timestamps import EARLIEST, ISO_PATTERN, MAX_FUTURE, sql_range
from flywheel_pipeline.landing_store import LandingStore, open_store
from flywheel_pipeline.warehouse.concurrency import retry_on_conflict
from flywheel_pipeline.warehouse.schema import SENDGRID_EVENTS, new_batch, take_ids, transaction

# ISO 8601 text in the form the service accepts too (core/timestamps.py) -> UTC TIMESTAMP
# (offsets honoured, no offset read as UTC); other text -> NULL (quarantined).
_TS = ("CASE WHEN regexp_full_match({expr}, '" + ISO_PATTERN.replace("{", "{{").replace("}", "}}") + "') "
       "THEN timezone('UTC', try_cast({expr} AS TIMESTAMPTZ)) END")
_RANGE = f"before {EARLIEST.date()} or more than a day after ingestion"


def _parse_common(fields: dict[str, str]) -> str:
    """Parse each line once: JSON validity, object check, and one ``json_transform`` into a
    struct of the source's fields (scalars as text, so invalid values can be reported)."""
    structure = json.dumps(fields)
    return f"""
    SELECT source_file, line_no, line,
           CASE WHEN NOT utf8 THEN 'not UTF-8 text'
                WHEN j IS NULL THEN 'malformed JSON'
                WHEN json_type(j) <> 'OBJECT' THEN 'not a JSON object' END AS base_reason,
           CASE WHEN json_type(j) = 'OBJECT' THEN json_transform(j, '{structure}') END AS r
    FROM (SELECT source_file, line_no, line, utf8,
                 CASE WHEN utf8 AND json_valid(line) THEN line::JSON END AS j FROM _lines
          WHERE line <> '' AND (json_valid(line) OR trim(line) <> ''))
    """


_V = "VARCHAR"
MESSAGES_FIELDS = {k: _V for k in (
    "message_id", "organization_id", "campaign_id", "lead_id", "recipient_email", "channel", "sent_at",
    "model_id", "model_version", "ab_group", "task_type", "system_prompt", "user_prompt", "subject",
    "body", "framework", "tone", "prompt_tokens", "input_tokens", "completion_tokens", "output_tokens",
    "cost_usd", "latency_ms", "template_id", "template_version")} | {"metadata": "JSON"}

MESSAGES_SQL = f"""
WITH p AS ({_parse_common(MESSAGES_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason,
           r.message_id, r.organization_id, r.organization_id AS message_org, r.campaign_id, r.lead_id,
           lower(trim(r.recipient_email)) AS recipient_email, r.channel,
           {_TS.format(expr='r.sent_at')} AS sent_at, r.sent_at AS sent_at_text,
           r.model_id, r.model_version, r.ab_group, r.task_type, r.system_prompt, r.user_prompt,
           r.subject, r.body, r.framework, r.tone,
           try_cast(coalesce(r.prompt_tokens, r.input_tokens) AS BIGINT) AS prompt_tokens,
           try_cast(coalesce(r.completion_tokens, r.output_tokens) AS BIGINT) AS completion_tokens,
           try_cast(r.cost_usd AS DOUBLE) AS cost_usd,
           try_cast(r.latency_ms AS DOUBLE) AS latency_ms,
           r.metadata,
           -- the template it was written with: top-level fields, else the older metadata keys
           coalesce(nullif(r.template_id, ''), nullif(json_extract_string(r.metadata, '$.prompt_template'), ''))
               AS template_id,
           coalesce(nullif(r.template_version, ''), nullif(json_extract_string(r.metadata, '$.prompt_version'), ''))
               AS template_version
    FROM p)
SELECT *,
       coalesce(base_reason,
                CASE WHEN message_id IS NULL OR message_id = '' THEN 'missing message_id'
                     WHEN organization_id IS NULL OR organization_id = '' THEN 'missing organization_id'
                     WHEN lead_id IS NULL OR lead_id = '' THEN 'missing lead_id'
                     WHEN sent_at_text IS NULL THEN 'missing sent_at'
                     WHEN sent_at IS NULL THEN 'invalid sent_at: not an ISO 8601 timestamp'
                     WHEN NOT {sql_range('sent_at')} THEN 'invalid sent_at: {_RANGE}'
                     WHEN NOT isfinite(cost_usd) THEN 'invalid cost_usd: not a finite number'
                     WHEN NOT cost_usd BETWEEN 0 AND {MAX_MESSAGE_COST_USD}
                          THEN 'invalid cost_usd: outside 0 to {MAX_MESSAGE_COST_USD} USD'
                     WHEN NOT isfinite(latency_ms) THEN 'invalid latency_ms: not a finite number' END) AS reason
FROM f
"""

MESSAGES_INSERT = """
INSERT INTO messages BY NAME
SELECT v.message_id, k.message_key, v.organization_id, campaign_id, lead_id, recipient_email, channel, sent_at,
       model_id, model_version, ab_group, task_type, system_prompt, user_prompt, subject, body,
       framework, tone, prompt_tokens, completion_tokens, cost_usd, latency_ms,
       len(list_distinct(regexp_extract_all(coalesce(body, ''), 'https?://[^\\s<>"'')]+'))) AS tracked_links,
       metadata, source_file, line_no, $batch_id AS batch_id, template_id, template_version
FROM {rows} v JOIN message_keys k ON k.organization_id = v.message_org AND k.message_id = v.message_id
"""

SENDGRID_FIELDS = {k: _V for k in ("sg_event_id", "message_id", "organization_id", "event", "timestamp", "email",
                                   "sg_machine_open", "url", "type", "reason", "sg_message_id")}

_EPOCH_OK = (f"ts_epoch BETWEEN {int(EARLIEST.timestamp())} "
             f"AND epoch(now()) + {int(MAX_FUTURE.total_seconds())}")

SENDGRID_SQL = f"""
WITH p AS ({_parse_common(SENDGRID_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason,
           r.sg_event_id, r.message_id, nullif(r.organization_id, '') AS organization_id,
           nullif(r.organization_id, '') AS message_org, coalesce(r.organization_id, '') AS key_org,
           lower(r.event) AS event,
           try_cast(r.timestamp AS DOUBLE) AS ts_epoch, r.timestamp AS ts_text,
           lower(trim(r.email)) AS email, try_cast(r.sg_machine_open AS BOOLEAN) AS machine_open,
           r.url, r.type AS bounce_type, r.reason AS reason_text, r.sg_message_id
    FROM p)
SELECT *,
       CASE WHEN ts_epoch IS NOT NULL AND {_EPOCH_OK}
            THEN timezone('UTC', to_timestamp(ts_epoch)) END AS occurred_at,
       coalesce(base_reason,
                CASE WHEN sg_event_id IS NULL OR sg_event_id = '' THEN 'missing sg_event_id'
                     WHEN event IS NULL OR event = '' THEN 'missing event'
                     WHEN event NOT IN {SENDGRID_EVENTS} THEN 'unknown event type: ' || event
                     WHEN ts_text IS NULL THEN 'missing timestamp'
                     WHEN ts_epoch IS NULL OR NOT isfinite(ts_epoch) THEN 'invalid timestamp: not unix seconds'
                     WHEN NOT {_EPOCH_OK} THEN 'invalid timestamp: {_RANGE}'
                     WHEN message_id IS NULL OR message_id = ''
                         THEN 'unattributable: no message_id custom arg' END) AS reason
FROM f
"""

SENDGRID_INSERT = """
INSERT INTO email_events
SELECT sg_event_id, v.message_id, k.message_key, event::sendgrid_event, occurred_at, email, machine_open, url,
       bounce_type, reason_text, sg_message_id, source_file, line_no, $batch_id, v.organization_id, v.key_org
FROM {rows} v JOIN message_keys k ON k.organization_id = v.message_org AND k.message_id = v.message_id
"""

CRM_TYPES = ("meeting_booked", "meeting_completed", "deal_closed", "deal_lost")

CRM_FIELDS = {k: _V for k in ("event_id", "source", "type", "message_id", "organization_id", "lead_id", "email",
                              "occurred_at", "deal_value", "currency")}

CRM_SQL = f"""
WITH p AS ({_parse_common(CRM_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason,
           r.event_id, r.source AS crm_source, lower(r.type) AS type,
           nullif(r.message_id, '') AS given_message_id, nullif(r.lead_id, '') AS lead_id,
           nullif(r.organization_id, '') AS organization_id, nullif(r.organization_id, '') AS message_org,
           coalesce(r.organization_id, '') AS key_org, nullif(lower(trim(r.email)), '') AS email,
           {_TS.format(expr='r.occurred_at')} AS occurred_at, r.occurred_at AS occurred_text,
           try_cast(r.deal_value AS DOUBLE) AS deal_value, r.deal_value AS deal_value_text,
           upper(r.currency) AS currency
    FROM p)
SELECT *,
       coalesce(base_reason,
                CASE WHEN event_id IS NULL OR event_id = '' THEN 'missing event_id'
                     WHEN type IS NULL THEN 'missing type'
                     WHEN type NOT IN {CRM_TYPES} THEN 'unknown type: ' || type
                     WHEN occurred_text IS NULL THEN 'missing occurred_at'
                     WHEN occurred_at IS NULL THEN 'invalid occurred_at: not an ISO 8601 timestamp'
                     WHEN NOT {sql_range('occurred_at')} THEN 'invalid occurred_at: {_RANGE}'
                     WHEN deal_value_text IS NOT NULL AND deal_value IS NULL THEN 'invalid deal_value'
                     WHEN NOT isfinite(deal_value) THEN 'invalid deal_value: not a finite number'
                     WHEN deal_value < 0 THEN 'invalid deal_value: negative'
                     WHEN given_message_id IS NULL AND lead_id IS NULL AND email IS NULL
                         THEN 'unattributable: no message_id, lead_id or email' END) AS reason
FROM f
"""

CRM_INSERT = """
INSERT INTO crm_events
SELECT event_id, crm_source, type, given_message_id, lead_id, email, occurred_at, deal_value,
       currency, given_message_id, k.message_key, CASE WHEN given_message_id IS NOT NULL THEN 'message_id' END,
       CASE WHEN given_message_id IS NOT NULL THEN $batch_id END, source_file, line_no, $batch_id,
       v.organization_id, v.key_org
FROM {rows} v LEFT JOIN message_keys k ON k.organization_id = v.message_org AND k.message_id = v.given_message_id
"""

REPLIES_FIELDS = {k: _V for k in ("reply_id", "message_id", "organization_id", "received_at", "from_email", "subject",
                                  "text")} | {"headers": "JSON"}

REPLIES_SQL = f"""
WITH p AS ({_parse_common(REPLIES_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason,
           r.reply_id, nullif(r.message_id, '') AS given_message_id,
           nullif(r.organization_id, '') AS organization_id, nullif(r.organization_id, '') AS message_org,
           coalesce(r.organization_id, '') AS key_org,
           {_TS.format(expr='r.received_at')} AS received_at, r.received_at AS received_text,
           nullif(lower(trim(r.from_email)), '') AS from_email, r.subject, r.text,
           CASE WHEN json_type(r.headers) = 'OBJECT' THEN r.headers END AS headers,
           json_type(r.headers) AS headers_type
    FROM p)
SELECT *,
       coalesce(base_reason,
                CASE WHEN reply_id IS NULL OR reply_id = '' THEN 'missing reply_id'
                     WHEN received_text IS NULL THEN 'missing received_at'
                     WHEN received_at IS NULL THEN 'invalid received_at: not an ISO 8601 timestamp'
                     WHEN NOT {sql_range('received_at')} THEN 'invalid received_at: {_RANGE}'
                     WHEN headers_type IS NOT NULL AND headers_type NOT IN ('OBJECT', 'NULL')
                         THEN 'invalid headers: not an object'
                     WHEN given_message_id IS NULL AND from_email IS NULL
                         THEN 'unattributable: no message_id or from_email' END) AS reason
FROM f
"""

REPLIES_INSERT = """
INSERT INTO replies
SELECT reply_id, given_message_id, received_at, from_email, subject, text, headers,
       given_message_id, k.message_key, CASE WHEN given_message_id IS NOT NULL THEN 'message_id' END,
       CASE WHEN given_message_id IS NOT NULL THEN $batch_id END, source_file, line_no, $batch_id,
       v.organization_id, v.key_org
FROM {rows} v LEFT JOIN message_keys k ON k.organization_id = v.message_org AND k.message_id = v.given_message_id
"""

REPLY_LABELS_FIELDS = {k: _V for k in ("label_id", "reply_id", "organization_id", "intent", "sentiment",
                                       "labelled_at", "labelled_by")}

REPLY_LABELS_SQL = f"""
WITH p AS ({_parse_common(REPLY_LABELS_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason, r.label_id, r.reply_id, r.intent, r.sentiment,
           {_TS.format(expr='r.labelled_at')} AS labelled_at, r.labelled_at AS labelled_text, r.labelled_by,
           -- the reply's organization as named (a string, '' for the reply that names none), else
           -- resolved from the loaded replies (RESOLVE_LABELLED_REPLIES)
           r.organization_id, r.organization_id AS key_org,
           NULL::VARCHAR AS message_id, NULL::VARCHAR AS message_org
    FROM p)
SELECT *,
       coalesce(base_reason,
                CASE WHEN label_id IS NULL OR label_id = '' THEN 'missing label_id'
                     WHEN reply_id IS NULL OR reply_id = '' THEN 'missing reply_id'
                     WHEN intent IS NULL OR intent NOT IN {INTENTS} THEN 'unknown intent: ' || coalesce(intent, '')
                     WHEN sentiment IS NULL OR sentiment NOT IN {SENTIMENTS}
                         THEN 'unknown sentiment: ' || coalesce(sentiment, '')
                     WHEN labelled_text IS NULL THEN 'missing labelled_at'
                     WHEN labelled_at IS NULL THEN 'invalid labelled_at: not an ISO 8601 timestamp' END) AS reason
FROM f
"""

REPLY_LABELS_INSERT = """
INSERT INTO reply_labels
SELECT label_id, reply_id, intent, sentiment, labelled_at, labelled_by, source_file, line_no, $batch_id,
       organization_id, key_org
FROM {rows}
"""

# People's 1-5 ratings of a message (POST /feedback). The rating must be a JSON integer (json_type
# UBIGINT/BIGINT): 4.5, 5.0, "5" and true are refused as the service refuses them
# (core/inbound_records.check_feedback); so are unknown fields, a comment that is not text or too long.
FEEDBACK_FIELDS = {k: _V for k in ("feedback_id", "message_id", "organization_id", "rater", "rated_at")} | {
    "rating": "JSON", "comment": "JSON"}
_FEEDBACK_KNOWN = tuple(FEEDBACK_RECORD_FIELDS)

FEEDBACK_SQL = f"""
WITH p AS ({_parse_common(FEEDBACK_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason,
           r.feedback_id, r.message_id, nullif(r.organization_id, '') AS organization_id,
           nullif(r.organization_id, '') AS message_org, coalesce(r.organization_id, '') AS key_org,
           json_type(r.rating) AS rating_type,
           CASE WHEN json_type(r.rating) IN ('UBIGINT', 'BIGINT') THEN try_cast(r.rating ->> '$' AS BIGINT) END
               AS rating_value,
           nullif(r.rater, '') AS rater, json_type(r.comment) AS comment_type,
           CASE WHEN json_type(r.comment) = 'VARCHAR' THEN r.comment ->> '$' END AS comment,
           {_TS.format(expr='r.rated_at')} AS rated_at, r.rated_at AS rated_text,
           CASE WHEN base_reason IS NULL
                THEN list_filter(json_keys(line::JSON), lambda k: k NOT IN {_FEEDBACK_KNOWN}) END AS unknown_fields
    FROM p)
SELECT * EXCLUDE (rating_value),
       CASE WHEN rating_value BETWEEN {RATING_MIN} AND {RATING_MAX} THEN rating_value::UTINYINT END AS rating,
       coalesce(base_reason,
                CASE WHEN feedback_id IS NULL OR feedback_id = '' THEN 'missing feedback_id'
                     WHEN message_id IS NULL OR message_id = '' THEN 'missing message_id'
                     WHEN len(unknown_fields) > 0
                         THEN 'unknown field(s): ' || array_to_string(list_sort(unknown_fields), ', ')
                     WHEN rating_type IS NULL THEN 'missing rating'
                     WHEN rating_value IS NULL OR rating_value NOT BETWEEN {RATING_MIN} AND {RATING_MAX}
                         THEN 'invalid rating: not an integer from {RATING_MIN} to {RATING_MAX}'
                     WHEN length(rater) > {RATER_MAX_CHARS}
                         THEN 'invalid rater: longer than {RATER_MAX_CHARS} characters'
                     WHEN comment_type IS NOT NULL AND comment_type <> 'VARCHAR' THEN 'invalid comment: not text'
                     WHEN length(comment) > {COMMENT_MAX_CHARS}
                         THEN 'invalid comment: longer than {COMMENT_MAX_CHARS} characters'
                     WHEN rated_text IS NULL THEN 'missing rated_at'
                     WHEN rated_at IS NULL THEN 'invalid rated_at: not an ISO 8601 timestamp'
                     WHEN NOT {sql_range('rated_at')} THEN 'invalid rated_at: {_RANGE}' END) AS reason
FROM f
"""

FEEDBACK_INSERT = """
INSERT INTO feedback
SELECT feedback_id, v.message_id, k.message_key, rating, rater, comment, rated_at, source_file, line_no, $batch_id,
       v.organization_id, v.key_org
FROM {rows} v JOIN message_keys k ON k.organization_id = v.message_org AND k.message_id = v.message_id
"""

# The AI council's preference pairs (POST /council, core/council.pair_records).
COUNCIL_PAIRS_FIELDS = {k: _V for k in (
    "pair_id", "council_id", "organization_id", "task_type", "preferred_model", "preferred", "preferred_score",
    "non_preferred_model", "non_preferred", "non_preferred_score", "margin", "judge", "judge_trusted", "strategy",
    "decided_at")} | {"messages": "JSON"}


def _missing(*names: str) -> str:
    return "\n".join(f"WHEN {n} IS NULL OR {n} = '' THEN 'missing {n}'" for n in names)


COUNCIL_PAIRS_SQL = f"""
WITH p AS ({_parse_common(COUNCIL_PAIRS_FIELDS)}),
f AS (
    SELECT source_file, line_no, line, base_reason,
           r.pair_id, r.council_id, nullif(r.organization_id, '') AS organization_id,
           coalesce(r.organization_id, '') AS key_org, r.task_type, r.messages,
           r.preferred_model, r.preferred, try_cast(r.preferred_score AS DOUBLE) AS preferred_score,
           r.non_preferred_model, r.non_preferred, try_cast(r.non_preferred_score AS DOUBLE) AS non_preferred_score,
           try_cast(r.margin AS DOUBLE) AS margin, r.judge,
           CASE lower(r.judge_trusted) WHEN 'true' THEN true WHEN 'false' THEN false END AS judge_trusted,
           r.strategy, {_TS.format(expr='r.decided_at')} AS decided_at, r.decided_at AS decided_text
    FROM p)
SELECT *,
       coalesce(base_reason,
                CASE {_missing("pair_id", "council_id", "task_type", "preferred_model", "preferred",
                               "non_preferred_model", "non_preferred", "judge", "strategy")}
                     WHEN messages IS NULL OR json_type(messages) <> 'ARRAY' OR json_array_length(messages) = 0
                         THEN 'invalid messages: not a non-empty array'
                     WHEN NOT coalesce(isfinite(preferred_score), false)
                          OR NOT coalesce(isfinite(non_preferred_score), false)
                         THEN 'invalid score: not a finite number'
                     WHEN NOT coalesce(isfinite(margin), false) OR margin <= 0
                         THEN 'invalid margin: not a positive number'
                     WHEN judge_trusted IS NULL THEN 'invalid judge_trusted: not true or false'
                     WHEN decided_text IS NULL THEN 'missing decided_at'
                     WHEN decided_at IS NULL THEN 'invalid decided_at: not an ISO 8601 timestamp'
                     WHEN NOT {sql_range('decided_at')} THEN 'invalid decided_at: {_RANGE}' END) AS reason
FROM f
"""

COUNCIL_PAIRS_INSERT = """
INSERT INTO council_pairs
SELECT pair_id, council_id, task_type, messages, preferred_model, preferred, preferred_score, non_preferred_model,
       non_preferred, non_preferred_score, margin, judge, judge_trusted, strategy, decided_at, source_file, line_no,
       $batch_id, organization_id, key_org
FROM {rows}
"""


@dataclass(frozen=True)
class SourceSpec:
    source: str
    table: str
    # the record's key: a duplicate has the same values. Records are identified within the
    # organization they name (key_org, '' when none), so another organization's record with the
    # same id is another record: it can neither shadow, drop nor replace this one
    key: tuple[str, ...]
    parse_sql: str
    insert_sql: str  # inserts the rows of {rows} (a relation with _parsed's columns)
    # what a record stores, as (stored column, expression over _parsed): two records with one key
    # and the same content are copies; with different content they conflict (see _settle_duplicates)
    content: tuple[tuple[str, str], ...]
    message_id_column: str = "message_id"  # the column of _parsed that names our message
    of_a_message: bool = True  # the table keeps its message_key and organization_id (reply_labels name a reply)
    labelled: bool = True  # labels read the table: a replaced row's message is refolded (feedback: not read)

    def canonical_sql(self, *, parsed: bool) -> str:
        """The record's canonical JSON (stored columns in a fixed order): from _parsed's
        expressions, or (parsed=False) from the stored table's columns."""
        fields = ", ".join(f"{name} := {expr if parsed else name}" for name, expr in self.content)
        return f"to_json(struct_pack({fields}))::VARCHAR"


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in names)


SPECS: dict[str, SourceSpec] = {
    "messages": SourceSpec(
        "messages", "messages", ("organization_id", "message_id"), MESSAGES_SQL, MESSAGES_INSERT,
        _same("organization_id", "message_id", "campaign_id", "lead_id", "recipient_email", "channel", "sent_at",
              "model_id", "model_version", "ab_group", "task_type", "system_prompt", "user_prompt", "subject",
              "body", "framework", "tone", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms",
              "metadata", "template_id", "template_version")),
    "sendgrid": SourceSpec(
        "sendgrid", "email_events", ("key_org", "sg_event_id"), SENDGRID_SQL, SENDGRID_INSERT,
        _same("sg_event_id", "message_id", "organization_id")
        + (("event", "event::VARCHAR"),) + _same("occurred_at", "email", "machine_open", "url", "bounce_type")
        + (("reason", "reason_text"), ("sg_message_id", "sg_message_id"))),
    "crm": SourceSpec(
        "crm", "crm_events", ("key_org", "event_id"), CRM_SQL, CRM_INSERT,
        (("event_id", "event_id"), ("source", "crm_source"))
        + _same("type", "given_message_id", "organization_id", "lead_id", "email", "occurred_at", "deal_value",
                "currency"), "given_message_id"),
    "replies": SourceSpec(
        "replies", "replies", ("key_org", "reply_id"), REPLIES_SQL, REPLIES_INSERT,
        _same("reply_id", "given_message_id", "organization_id", "received_at", "from_email", "subject", "text",
              "headers"), "given_message_id"),
    "reply_labels": SourceSpec(
        "reply_labels", "reply_labels", ("label_id",), REPLY_LABELS_SQL, REPLY_LABELS_INSERT,
        # the label is its content: the reply (as the label names it), intent and sentiment; landing
        # the same correction again (a new time or reviewer) is a copy. Labels are landed by the
        # installation's operators (`flywheel replies correct`), not by an organization's key.
        _same("label_id", "reply_id", "organization_id", "intent", "sentiment"), of_a_message=False),
    "feedback": SourceSpec(
        "feedback", "feedback", ("key_org", "feedback_id"), FEEDBACK_SQL, FEEDBACK_INSERT,
        # the rating is its content without its time: a retried post that carried no rated_at (and
        # so took another time of receipt) is a copy; the first landed is kept
        _same("feedback_id", "message_id", "organization_id", "rating", "rater", "comment"),
        labelled=False),
    "council_pairs": SourceSpec(
        "council_pairs", "council_pairs", ("key_org", "pair_id"), COUNCIL_PAIRS_SQL, COUNCIL_PAIRS_INSERT,
        _same("pair_id", "council_id", "organization_id", "task_type", "messages", "preferred_model", "preferred",
              "preferred_score", "non_preferred_model", "non_preferred", "non_preferred_score", "margin", "judge",
              "judge_trusted", "strategy", "decided_at"), of_a_message=False, labelled=False),
}

# Organizations and message keys of a chunk's records (see _key_messages).
# A key nobody has claimed ('': made for a record that named no organization) is taken by the
# first organization that names its id (the smallest, if several do in one chunk).
CLAIM_UNKNOWN_KEYS = """
UPDATE message_keys AS k SET organization_id = c.message_org
FROM (SELECT {column} AS message_id, min(message_org) AS message_org FROM _parsed
      WHERE reason IS NULL AND message_org IS NOT NULL AND message_org <> '' AND {column} IS NOT NULL GROUP BY 1) c
WHERE k.organization_id = '' AND k.message_id = c.message_id
"""

# Every (organization, message id) a source names gets its integer key (events may land
# before their message).
# (keys are taken from warehouse_counters, in (organization, message id) order)
NEW_MESSAGE_KEYS = """
CREATE OR REPLACE TEMP TABLE _new_keys AS
SELECT organization_id, message_id, row_number() OVER (ORDER BY organization_id, message_id) AS n
FROM (SELECT DISTINCT message_org AS organization_id, {column} AS message_id FROM _parsed
      WHERE reason IS NULL AND message_org IS NOT NULL AND {column} IS NOT NULL) v
ANTI JOIN message_keys k USING (organization_id, message_id)
"""

# A record that names no organization (older senders) takes the organization of the one key its
# message id has ('' when no record named the id yet); an id that organizations share is
# ambiguous and the record is quarantined.
AMBIGUOUS = "unattributable: the message_id is used by several organizations and the record names none"
RESOLVE_ORGANIZATIONS = f"""
UPDATE _parsed AS p SET message_org = CASE WHEN r.orgs <= 1 THEN r.message_org END,
                        reason = CASE WHEN r.orgs > 1 THEN '{AMBIGUOUS}' END
FROM (SELECT v.message_id, count(k.organization_id) AS orgs, coalesce(min(k.organization_id), '') AS message_org
      FROM (SELECT DISTINCT {{column}} AS message_id FROM _parsed
            WHERE reason IS NULL AND organization_id IS NULL AND {{column}} IS NOT NULL) v
      LEFT JOIN message_keys k USING (message_id) GROUP BY 1) r
WHERE p.reason IS NULL AND p.organization_id IS NULL AND p.{{column}} = r.message_id
"""

# A reviewed label that names no organization (hand-written, or reviewed before schema 5) names
# the reply of the only organization that has its reply id ('': the reply names none, or none has
# landed yet); an id that organizations share is ambiguous and the label is quarantined. The
# organization is resolved once, here, so replies landing later never move a label.
AMBIGUOUS_REPLY = "unattributable: the reply_id is used by several organizations and the label names none"
RESOLVE_LABELLED_REPLIES = f"""
UPDATE _parsed AS p SET key_org = CASE WHEN r.orgs <= 1 THEN r.key_org END,
                        reason = CASE WHEN r.orgs > 1 THEN '{AMBIGUOUS_REPLY}' END
FROM (SELECT v.reply_id, count(x.key_org) AS orgs, coalesce(min(x.key_org), '') AS key_org
      FROM (SELECT DISTINCT reply_id FROM _parsed WHERE reason IS NULL AND organization_id IS NULL) v
      LEFT JOIN (SELECT key_org, reply_id FROM replies) x USING (reply_id) GROUP BY 1) r
WHERE p.reason IS NULL AND p.organization_id IS NULL AND p.reply_id = r.reply_id
"""


@dataclass
class IngestResult:
    source: str
    batch_ids: list[int] = field(default_factory=list)
    files: int = 0
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    changed_files: list[str] = field(default_factory=list)
    attributed: int = 0
    seconds: float = 0.0

    def add(self, batch_id: int, files: int, lines: int, accepted: int, duplicates: int,
            reasons: Sequence[tuple[str, int]]) -> None:
        """Count one committed batch; reasons whose detail varies per record (an unknown event
        type, a file's size) are counted under their common part."""
        self.batch_ids.append(batch_id)
        self.files += files
        self.lines += lines
        self.accepted += accepted
        self.duplicates += duplicates
        for reason, count in reasons:
            key = reason.split(":")[0] if reason.startswith(("unknown ", TOO_LARGE, CONFLICT)) else reason
            self.quarantine_reasons[key] = self.quarantine_reasons.get(key, 0) + count
            self.quarantined += count

    def as_metadata(self) -> dict[str, object]:
        return {
            "files_ingested": self.files, "lines_read": self.lines, "rows_accepted": self.accepted,
            "duplicates_skipped": self.duplicates, "lines_quarantined": self.quarantined,
            "quarantine_reasons": dict(sorted(self.quarantine_reasons.items())),
            "batch_ids": list(self.batch_ids), "seconds": round(self.seconds, 3),
        }


def pending_files(con: duckdb.DuckDBPyConnection, landing: Path | LandingStore, source: str
                  ) -> tuple[list[landing_zone.LandingFile], list[str]]:
    """Landing files not yet ingested, and names of ingested files whose size changed
    (a broken immutability contract: reported, never re-read)."""
    known = dict(con.execute("SELECT file_name, size_bytes FROM landing_files WHERE source = ?",
                             [source]).fetchall())
    new, changed = [], []
    for f in open_store(landing).list_files(source):
        if f.name not in known:
            new.append(f)
        elif known[f.name] != f.size_bytes:
            changed.append(f.name)
    return new, changed


def _chunks(files: Sequence[landing_zone.LandingFile], max_bytes: int, max_files: int
            ) -> list[list[landing_zone.LandingFile]]:
    chunks: list[list[landing_zone.LandingFile]] = []
    current: list[landing_zone.LandingFile] = []
    size = 0
    for f in files:
        if current and (size + f.size_bytes > max_bytes or len(current) >= max_files):
            chunks.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size_bytes
    if current:
        chunks.append(current)
    return chunks


# DuckDB's read_text reads a file into one string, of at most 4 GiB.
MAX_FILE_BYTES = 2**32 - 1
TOO_LARGE = "file too large to read"


def ingest_source(con: duckdb.DuckDBPyConnection, landing: Path | LandingStore, source: str, *,
                  chunk_bytes: int = 256 * 1024 * 1024, chunk_files: int = 200,
                  progress: Callable[[str], None] | None = None) -> IngestResult:
    """Ingest every new landing file of ``source`` (of a directory or an object store: a chunk of
    objects is read from a private local copy); safe to call any number of times."""
    spec = SPECS[source]
    store = open_store(landing)
    started = time.perf_counter()
    result = IngestResult(source)
    files, result.changed_files = pending_files(con, store, source)
    too_large = [f for f in files if f.size_bytes > MAX_FILE_BYTES]
    if too_large:
        _refuse_whole_files(con, spec, too_large, result)
        files = [f for f in files if f.size_bytes <= MAX_FILE_BYTES]
    chunks = _chunks(files, chunk_bytes, chunk_files)
    for index, chunk in enumerate(chunks, 1):
        with store.local_paths(chunk) as local:
            _ingest_chunk(con, spec, chunk, local, result)
        if progress:
            progress(f"{source}: chunk {index}/{len(chunks)} ({len(chunk)} files), "
                     f"{result.accepted} rows accepted so far")
    result.seconds = time.perf_counter() - started
    return result


def _close_batch(con: duckdb.DuckDBPyConnection, spec: SourceSpec, batch_id: int,
                 files: Sequence[tuple[landing_zone.LandingFile, int, int, int]], accepted: int,
                 duplicates: int, replaced: int = 0) -> None:
    """Record the batch's files in ``landing_files`` (so they are never read again), each with
    its lines, valid lines and quarantined records, and the batch's totals (its quarantined
    records include the loaded rows it replaced, which it quarantined)."""
    for f, lines, valid, quarantined in files:
        con.execute("INSERT INTO landing_files VALUES (?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                    [spec.source, f.name, f.size_bytes, lines, valid, quarantined, batch_id])
    con.execute("""UPDATE ingest_batches SET finished_at = now()::TIMESTAMP, files = ?, lines = ?,
                   accepted = ?, duplicates = ?, quarantined = ? WHERE batch_id = ?""",
                [len(files), sum(r[1] for r in files), accepted, duplicates, sum(r[3] for r in files) + replaced,
                 batch_id])


def _refuse_whole_files(con: duckdb.DuckDBPyConnection, spec: SourceSpec,
                        files: list[landing_zone.LandingFile], result: IngestResult) -> None:
    """Files DuckDB cannot read in one piece are quarantined whole (one record, line 0) and
    recorded, so they neither block the files after them nor fail every refresh; the reason
    says to split them into new, smaller files, which are then ingested as usual."""
    reasons = [(f"{TOO_LARGE}: {f.size_bytes / 2**30:.1f} GiB, more than the 4 GiB DuckDB reads per file; "
                "split it into smaller files with new names") for f in files]
    retry_on_conflict(lambda: _record_refused(con, spec, files, reasons, result), f"ingesting {spec.source}")


def _record_refused(con: duckdb.DuckDBPyConnection, spec: SourceSpec, files: list[landing_zone.LandingFile],
                    reasons: list[str], result: IngestResult) -> None:
    with transaction(con):
        batch_id = new_batch(con, "ingest", spec.source)
        for f, reason in zip(files, reasons):
            con.execute("INSERT INTO quarantine VALUES (?, ?, 0, ?, NULL, ?, now()::TIMESTAMP)",
                        [spec.source, f.name, reason, batch_id])
        _close_batch(con, spec, batch_id, [(f, 0, 0, 1) for f in files], accepted=0, duplicates=0)
    result.add(batch_id, len(files), 0, 0, 0, [(reason, 1) for reason in reasons])


# Every line of a chunk's files with its number (generate_subscripts beside unnest), CR of
# CRLF endings and a UTF-8 byte order mark (some Windows tools write one) removed.
READ_LINES = """
CREATE OR REPLACE TEMP TABLE _lines AS
SELECT parse_filename(filename) AS source_file, generate_subscripts(lines, 1) AS line_no,
       rtrim(unnest(lines), chr(13)) AS line, true AS utf8
FROM (SELECT filename,
             string_split(CASE WHEN starts_with(content, chr(65279)) THEN substr(content, 2) ELSE content END,
                          chr(10)) AS lines
      FROM read_text(?))
"""

# The same from the files' bytes, for a chunk read_text refuses (not UTF-8): a BLOB cast to
# VARCHAR escapes every byte outside printable ASCII, and the backslash itself, as \xNN, so
# the text '\x0A' only ever stands for a newline and each line decodes on its own. A line that
# is not UTF-8 keeps its escaped text (utf8 = false), which the quarantine shows.
READ_LINES_AS_BYTES = """
CREATE OR REPLACE TEMP TABLE _lines AS
SELECT source_file, line_no, coalesce(rtrim(decoded, chr(13)), escaped) AS line, decoded IS NOT NULL AS utf8
FROM (SELECT source_file, line_no, escaped, try(decode(escaped::BLOB)) AS decoded
      FROM (SELECT parse_filename(filename) AS source_file, generate_subscripts(lines, 1) AS line_no,
                   unnest(lines) AS escaped
            FROM (SELECT filename,
                         string_split(CASE WHEN starts_with(content::VARCHAR, '\\xEF\\xBB\\xBF')
                                           THEN substr(content::VARCHAR, 13) ELSE content::VARCHAR END,
                                      '\\x0A') AS lines
                  FROM read_blob(?))))
"""


def _read_and_parse(con: duckdb.DuckDBPyConnection, spec: SourceSpec, paths: list[str]) -> None:
    """Read a chunk's files into ``_parsed``: one row per non-blank line, its fields or the
    reason it is quarantined.

    Only temporary tables are written, before the chunk's transaction opens, so the memory of
    the raw lines is freed as soon as they are parsed (a table dropped inside a transaction is
    kept until it commits). Blank lines are skipped by the parse: filtering the unnested lines,
    or indexing the split list row by row (lines[i] over range()), was 2-5x slower on large
    files."""
    try:
        con.execute(READ_LINES, [paths])
    except duckdb.InvalidInputException as exc:
        if "UTF-8" not in str(exc):
            raise
        # some file is not UTF-8 text: the chunk is read as bytes, line by line, so that only
        # the lines that are not UTF-8 are quarantined (rarely needed, and slower)
        con.execute(READ_LINES_AS_BYTES, [paths])
    # the raw line is kept only where it is quarantined
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _parsed AS
                    SELECT * REPLACE (CASE WHEN reason IS NOT NULL THEN line END AS line)
                    FROM ({spec.parse_sql})""")
    con.execute("DROP TABLE _lines")


def _key_messages(con: duckdb.DuckDBPyConnection, spec: SourceSpec) -> None:
    """Give every record's message its key, within the record's organization: unclaimed keys
    of the ids that organizations name are claimed, their new keys made; then records that name
    no organization are resolved by message id (or quarantined as ambiguous) and keyed.
    (Reviewed labels name a reply instead: see RESOLVE_LABELLED_REPLIES.)"""
    if not spec.of_a_message:
        if spec.source == "reply_labels" and con.execute(
                "SELECT count(*) FROM (SELECT 1 FROM _parsed WHERE reason IS NULL AND organization_id IS NULL "
                "LIMIT 1)").fetchone()[0]:
            con.execute(RESOLVE_LABELLED_REPLIES)
        return
    column = spec.message_id_column
    if con.execute("SELECT count(*) FROM (SELECT 1 FROM message_keys WHERE organization_id = '' LIMIT 1)"
                   ).fetchone()[0]:
        con.execute(CLAIM_UNKNOWN_KEYS.format(column=column))
    _assign_message_keys(con, column)
    if con.execute(f"SELECT count(*) FROM (SELECT 1 FROM _parsed WHERE reason IS NULL AND organization_id IS NULL "
                   f"AND {column} IS NOT NULL LIMIT 1)").fetchone()[0]:
        con.execute(RESOLVE_ORGANIZATIONS.format(column=column))
        _assign_message_keys(con, column)


def _assign_message_keys(con: duckdb.DuckDBPyConnection, column: str) -> None:
    con.execute(NEW_MESSAGE_KEYS.format(column=column))
    count = con.execute("SELECT count(*) FROM _new_keys").fetchall()[0][0]
    if count:
        first = take_ids(con, "message_key", count)
        con.execute("INSERT INTO message_keys (organization_id, message_id, message_key) "
                    f"SELECT organization_id, message_id, {int(first) - 1} + n FROM _new_keys")
    con.execute("DROP TABLE _new_keys")


CONFLICT = "conflicting_duplicate"


def _settle_duplicates(con: duckdb.DuckDBPyConnection, spec: SourceSpec, batch_id: int) -> tuple[int, int]:
    """Insert the chunk's records; of several records with one key the one whose canonical JSON
    (``SourceSpec.canonical_sql``) sorts first wins, in the chunk and against the rows loaded
    before, so the winner does not depend on how files are batched. Copies with the same
    content are silent duplicates; a record with other content that loses is quarantined as
    ``conflicting_duplicate`` naming the record that won; a loaded row that loses to a new record
    is replaced and quarantined (its message is refolded and relabelled by the next label run,
    see ``message_refolds``). Returns (new rows, loaded rows replaced)."""
    key = ", ".join(spec.key)
    canonical = spec.canonical_sql(parsed=True)
    # the chunk: keys with several valid records, ranked by their canonical JSON
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dups AS
        SELECT {key}, source_file, line_no, c AS canonical,
               row_number() OVER w AS rn, first_value(c) OVER w AS won_c,
               first_value(source_file) OVER w AS won_file, first_value(line_no) OVER w AS won_line
        FROM (SELECT *, {canonical} AS c FROM (SELECT * FROM _parsed WHERE reason IS NULL)
              SEMI JOIN (SELECT {key} FROM _parsed WHERE reason IS NULL GROUP BY {key} HAVING count(*) > 1)
              USING ({key}))
        WINDOW w AS (PARTITION BY {key} ORDER BY c, source_file, line_no)
    """)
    def loser(alias: str) -> str:  # the start of a loser's reason, naming its key
        return f"'{CONFLICT}: {spec.key[-1]} ' || {alias}.{spec.key[-1]} || ', kept the record of '"
    con.execute(f"""
        UPDATE _parsed AS p SET reason = {loser('d')} || d.won_file || ':' || d.won_line, line = d.canonical
        FROM _dups d
        WHERE d.rn > 1 AND d.canonical <> d.won_c AND p.source_file = d.source_file AND p.line_no = d.line_no
    """)
    # one record per key: the winner (later identical copies are dropped with it)
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW _valid AS
        SELECT * EXCLUDE (line) FROM _parsed p WHERE reason IS NULL
        AND NOT EXISTS (SELECT 1 FROM _dups d WHERE d.rn > 1 AND d.source_file = p.source_file
                        AND d.line_no = p.line_no)
    """)
    # keys loaded before are left out here (and settled below)
    new_rows = f"(SELECT * FROM _valid ANTI JOIN (SELECT {key} FROM {spec.table}) USING ({key}))"
    inserted = con.execute(spec.insert_sql.format(rows=new_rows).replace("$batch_id", str(int(batch_id)))
                           ).fetchone()[0]
    # keys loaded before: the chunk's record against the loaded row (none when every one went in)
    expected = con.execute("SELECT (SELECT count(*) FROM _parsed WHERE reason IS NULL) "
                           "- (SELECT count(*) FROM _dups WHERE rn > 1)").fetchone()[0]
    if inserted == expected:
        return int(inserted), 0
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _rejected AS
        SELECT {key} FROM _valid ANTI JOIN (SELECT {key} FROM {spec.table} WHERE batch_id = {int(batch_id)})
        USING ({key})
    """)
    if not con.execute("SELECT count(*) FROM _rejected").fetchone()[0]:
        return int(inserted), 0
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _against AS
        SELECT {key}, n.source_file AS new_file, n.line_no AS new_line, n.c AS new_c,
               o.source_file AS old_file, o.line_no AS old_line, o.c AS old_c,
               {'o.message_key' if spec.of_a_message else 'NULL::BIGINT'} AS old_key
        FROM (SELECT *, {canonical} AS c FROM _valid SEMI JOIN _rejected USING ({key})) n
        JOIN (SELECT *, {spec.canonical_sql(parsed=False)} AS c FROM {spec.table} SEMI JOIN _rejected USING ({key})) o
        USING ({key})
        WHERE n.c <> o.c
    """)
    # a new record that sorts after the loaded one loses (both name one organization: the key
    # holds it, so an organization's loaded records are never replaced by another's)
    con.execute(f"""
        UPDATE _parsed AS p SET reason = {loser('a')} || a.old_file || ':' || a.old_line, line = a.new_c
        FROM _against a WHERE a.new_c > a.old_c
        AND p.source_file = a.new_file AND p.line_no = a.new_line
    """)
    con.execute("DELETE FROM _against WHERE new_c > old_c")
    replaced = con.execute("SELECT count(*) FROM _against").fetchone()[0]
    if not replaced:
        return int(inserted), 0
    # a new record that sorts first replaces the loaded row, which is quarantined; the losers
    # quarantined before as having lost to that row now name the new winner
    con.execute(f"""
        UPDATE quarantine AS q SET reason = {loser('a')} || a.new_file || ':' || a.new_line
        FROM _against a WHERE q.source = ? AND q.reason = {loser('a')} || a.old_file || ':' || a.old_line
    """, [spec.source])
    con.execute(f"""
        INSERT INTO quarantine
        SELECT ?, old_file, old_line, {loser('a')} || new_file || ':' || new_line, old_c, ?, now()::TIMESTAMP
        FROM _against a
    """, [spec.source, batch_id])
    # the replaced line is quarantined now: its file's counts say so
    con.execute("""
        UPDATE landing_files AS f SET valid_lines = f.valid_lines - a.n, quarantined = f.quarantined + a.n
        FROM (SELECT old_file, count(*) AS n FROM _against GROUP BY 1) a
        WHERE f.source = ? AND f.file_name = a.old_file
    """, [spec.source])
    if spec.labelled:
        con.execute("INSERT INTO message_refolds SELECT DISTINCT old_key, ? FROM _against WHERE old_key IS NOT NULL",
                    [batch_id])
    if spec.table == "messages":  # its redacted text, if any, is redone from the new row
        if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'redacted_messages' "
                       "AND database_name = current_database()").fetchone()[0]:
            con.execute("DELETE FROM redacted_messages WHERE message_key IN (SELECT old_key FROM _against)")
    if spec.table == "replies":  # classified again, from the new text
        con.execute("DELETE FROM reply_intents i USING _against a WHERE i.key_org = a.key_org "
                    "AND i.reply_id = a.reply_id")
    same_key = " AND ".join(f"t.{k} = a.{k}" for k in spec.key)
    con.execute(f"DELETE FROM {spec.table} t USING _against a WHERE {same_key}")
    con.execute(f"""CREATE OR REPLACE TEMP VIEW _winners AS
                    SELECT * FROM _valid v WHERE EXISTS (SELECT 1 FROM _against a WHERE a.new_file = v.source_file
                                                        AND a.new_line = v.line_no)""")
    con.execute(spec.insert_sql.format(rows="_winners").replace("$batch_id", str(int(batch_id))))
    return int(inserted), int(replaced)


def _recorded(con: duckdb.DuckDBPyConnection, source: str, files: Sequence[landing_zone.LandingFile]) -> set[str]:
    """The names of ``files`` in landing_files already (another process may have taken them since
    they were listed)."""
    return {row[0] for row in con.execute(
        "SELECT file_name FROM landing_files WHERE source = ? AND list_contains(?::VARCHAR[], file_name)",
        [source, [f.name for f in files]]).fetchall()}


def _ingest_chunk(con: duckdb.DuckDBPyConnection, spec: SourceSpec, chunk: list[landing_zone.LandingFile],
                  paths: list[str], result: IngestResult) -> None:
    """Ingest one chunk (its files read from ``paths``) in one transaction; a write conflict with
    another process (DuckLake) reruns it from reading the files."""
    retry_on_conflict(lambda: _ingest_chunk_once(con, spec, chunk, paths, result), f"ingesting {spec.source}")


def _ingest_chunk_once(con: duckdb.DuckDBPyConnection, spec: SourceSpec, chunk: list[landing_zone.LandingFile],
                       paths: list[str], result: IngestResult) -> None:
    try:
        _read_and_parse(con, spec, paths)
        with transaction(con):
            # files another writer recorded after they were listed are its own (in this
            # transaction's snapshot; one recorded later makes the commit conflict, and the retry sees it)
            taken = _recorded(con, spec.source, chunk)
            if taken:
                con.execute("DELETE FROM _parsed WHERE list_contains(?::VARCHAR[], source_file)", [sorted(taken)])
                chunk = [f for f in chunk if f.name not in taken]
                if not chunk:
                    return
            batch_id = new_batch(con, "ingest", spec.source)
            _key_messages(con, spec)
            inserted, replaced = _settle_duplicates(con, spec, batch_id)
            per_file = {name: (n, v) for name, n, v in con.execute(
                "SELECT source_file, count(*), count(*) FILTER (reason IS NULL) FROM _parsed GROUP BY 1").fetchall()}
            reasons = con.execute("SELECT reason, count(*) FROM _parsed WHERE reason IS NOT NULL GROUP BY 1").fetchall()
            if replaced:
                reasons.append((CONFLICT, replaced))
            lines, valid = sum(n for n, _ in per_file.values()), sum(v for _, v in per_file.values())
            con.execute("""
                INSERT INTO quarantine
                SELECT ?, source_file, line_no, reason, line, ?, now()::TIMESTAMP
                FROM _parsed WHERE reason IS NOT NULL
            """, [spec.source, batch_id])
            accepted = inserted + replaced
            recorded = []
            for f in chunk:
                n, v = per_file.get(f.name, (0, 0))
                recorded.append((f, n, v, n - v))
            _close_batch(con, spec, batch_id, recorded, accepted=accepted, duplicates=valid - accepted,
                         replaced=replaced)
    finally:
        for view in ("_valid", "_winners"):
            con.execute(f"DROP VIEW IF EXISTS {view}")
        for table in ("_parsed", "_lines", "_dups", "_rejected", "_against"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    result.add(batch_id, len(chunk), lines, accepted, valid - accepted, reasons)


def attribute_unlinked(con: duckdb.DuckDBPyConnection, table: str, policy: LabelPolicy) -> int:
    """See _attribute_unlinked_once (retried whole on a write conflict)."""
    return retry_on_conflict(lambda: _attribute_unlinked_once(con, table, policy), f"attributing {table}")


def _attribute_unlinked_once(con: duckdb.DuckDBPyConnection, table: str, policy: LabelPolicy) -> int:
    """Attach CRM events / replies that carry no message_id to the latest message sent to
    the same lead (CRM) or recipient email (both) at most ``attribution_window_days``
    before the event, of the record's organization when it names one. Rows that find no message yet stay unlinked and are retried on the
    next ingestion (their message may simply not have landed yet)."""
    if table == "crm_events":
        ts, keys = "occurred_at", (("lead_id", "lead_id"), ("email", "recipient_email"))
        pk = "event_id"
    elif table == "replies":
        ts, keys = "received_at", (("from_email", "recipient_email"),)
        pk = "reply_id"  # a row is (key_org, pk)
    else:
        raise ValueError(f"no attribution for table {table!r}")
    total = 0
    with transaction(con):
        batch_id = new_batch(con, "attribution", table)
        for column, message_column in keys:
            # a record of an organization matches that organization's messages only; one that
            # names none (older senders, CRM webhooks without an organization) any message
            for scoped in (True, False):
                org_match = " AND e.organization_id = m.organization_id" if scoped else ""
                changed = con.execute(f"""
                    UPDATE {table} AS t
                    SET message_id = a.message_id, message_key = a.message_key, attribution = '{column}',
                        attributed_batch_id = {batch_id}
                    FROM (
                        SELECT e.key_org, e.{pk} AS pk, m.message_id, m.message_key
                        FROM (SELECT key_org, {pk}, {column}, {ts}, organization_id FROM {table}
                              WHERE message_id IS NULL AND {column} IS NOT NULL
                                AND organization_id IS {'NOT ' if scoped else ''}NULL) e
                        ASOF JOIN (SELECT message_id, message_key, organization_id, {message_column} AS k, sent_at
                                   FROM messages WHERE {message_column} IS NOT NULL) m
                          ON e.{column} = m.k{org_match} AND e.{ts} >= m.sent_at
                        WHERE e.{ts} - m.sent_at <= to_days({int(policy.attribution_window_days)})
                    ) a
                    WHERE t.key_org = a.key_org AND t.{pk} = a.pk
                """).fetchone()[0]
                total += changed
        con.execute("UPDATE ingest_batches SET finished_at = now()::TIMESTAMP, accepted = ? "
                    "WHERE batch_id = ?", [total, batch_id])
    return total
