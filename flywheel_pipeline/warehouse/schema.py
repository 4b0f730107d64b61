"""DuckDB connection and schema.

All timestamps are stored as UTC ``TIMESTAMP`` values (ISO inputs with an offset are
converted; inputs without one are read as UTC). ``batch_id`` on every loaded row names the
ingestion batch that wrote it, which is how labelling finds new rows without scanning
history (row groups carry min/max zone maps, so ``batch_id > x`` skips old data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb

from flywheel_pipeline.warehouse import extensions, lake
from flywheel_pipeline.warehouse.concurrency import retry_on_conflict
from flywheel_pipeline.warehouse.label_layout import TERMINAL_MASK, stage_name_sql, unpacked_flag_sql

SCHEMA_VERSION = 14

# Set by a migration that replaced the label tables: the next label run rebuilds them in full
# (labels are derived data; events, messages, CRM events and replies are kept).
REBUILD_LABELS_KEY = "labels_rebuild_required"

# Version 2 stores labels in packed_labels (flags packed, message_labels a view) and a
# narrower message_state; the version 1 tables are dropped before the DDL recreates them.
_MIGRATE_FROM_1 = ("DROP VIEW IF EXISTS outcome_labels", "DROP TABLE IF EXISTS message_labels",
                   "DROP TABLE IF EXISTS message_state")

# Version 3 keeps the reply classifier's version in its own column (it was "name:version" in
# `classifier`); a stored intent whose classifier or version differs from the configured one
# is re-classified (warehouse/reply_intents.py). It adds reply_labels (created by the DDL).
_MIGRATE_TO_3 = ("ALTER TABLE reply_intents ADD COLUMN IF NOT EXISTS classifier_version VARCHAR",
                 "UPDATE reply_intents SET classifier = split_part(classifier, ':', 1), "
                 "classifier_version = coalesce(nullif(split_part(classifier, ':', 2), ''), '?') "
                 "WHERE classifier_version IS NULL")

# SendGrid Event Webhook event types (delivery and engagement events).
SENDGRID_EVENTS = ("processed", "dropped", "delivered", "deferred", "bounce", "open", "click",
                   "spamreport", "unsubscribe", "group_unsubscribe", "group_resubscribe")


def _flag_columns(*names: str) -> str:
    return ", ".join(f"{unpacked_flag_sql(name)} AS {name}" for name in names)


DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS schema_info (
        key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS ingest_batches (
        batch_id BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, source VARCHAR,
        started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP,
        files BIGINT, lines BIGINT, accepted BIGINT, duplicates BIGINT, quarantined BIGINT)""",
    """CREATE TABLE IF NOT EXISTS landing_files (
        source VARCHAR NOT NULL, file_name VARCHAR NOT NULL, size_bytes BIGINT NOT NULL,
        lines BIGINT NOT NULL, valid_lines BIGINT NOT NULL, quarantined BIGINT NOT NULL,
        batch_id BIGINT NOT NULL, ingested_at TIMESTAMP NOT NULL,
        PRIMARY KEY (source, file_name))""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        source VARCHAR NOT NULL, source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL,
        reason VARCHAR NOT NULL, raw_line VARCHAR, batch_id BIGINT NOT NULL,
        quarantined_at TIMESTAMP NOT NULL)""",
    # Every message, (organization_id, message_id), named by a message record or by an event
    # that arrived first, gets a dense integer surrogate key: labelling groups and joins on it,
    # not on strings. organization_id '' is "not known yet": a key made for a record that names
    # no organization (older senders), taken over by the first organization that names the id
    # (warehouse/ingest.py); an id never has an '' key beside a key of an organization. Keys come
    # from warehouse_counters (schema 8 and older: the sequence message_key_seq, now unused).
    """CREATE TABLE IF NOT EXISTS message_keys (
        organization_id VARCHAR NOT NULL, message_id VARCHAR NOT NULL, message_key BIGINT NOT NULL)""",
    f"CREATE TYPE IF NOT EXISTS sendgrid_event AS ENUM {SENDGRID_EVENTS}",
    """CREATE TABLE IF NOT EXISTS messages (
        message_id VARCHAR NOT NULL, message_key BIGINT NOT NULL, organization_id VARCHAR NOT NULL,
        campaign_id VARCHAR, lead_id VARCHAR NOT NULL, recipient_email VARCHAR, channel VARCHAR,
        sent_at TIMESTAMP NOT NULL, model_id VARCHAR, model_version VARCHAR, ab_group VARCHAR,
        task_type VARCHAR, system_prompt VARCHAR, user_prompt VARCHAR, subject VARCHAR,
        body VARCHAR, framework VARCHAR, tone VARCHAR, prompt_tokens BIGINT,
        completion_tokens BIGINT, cost_usd DOUBLE, latency_ms DOUBLE, tracked_links INTEGER,
        metadata JSON, source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL,
        batch_id BIGINT NOT NULL, PRIMARY KEY (organization_id, message_id))""",
    # Email events, CRM events and replies are identified within an organization too: key_org is
    # the organization the record names ('' when it names none: older senders, CRM webhooks,
    # which share one space of ids), organization_id the same with NULL for none; the key is
    # (key_org, <the source's id>), so two organizations' records with one id are two records.
    """CREATE TABLE IF NOT EXISTS email_events (
        sg_event_id VARCHAR NOT NULL, message_id VARCHAR NOT NULL, message_key BIGINT NOT NULL,
        event sendgrid_event NOT NULL, occurred_at TIMESTAMP NOT NULL, email VARCHAR,
        machine_open BOOLEAN, url VARCHAR, bounce_type VARCHAR, reason VARCHAR, sg_message_id VARCHAR,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR, key_org VARCHAR NOT NULL, PRIMARY KEY (key_org, sg_event_id))""",
    """CREATE TABLE IF NOT EXISTS crm_events (
        event_id VARCHAR NOT NULL, source VARCHAR, type VARCHAR NOT NULL,
        given_message_id VARCHAR, lead_id VARCHAR, email VARCHAR,
        occurred_at TIMESTAMP NOT NULL, deal_value DOUBLE, currency VARCHAR,
        message_id VARCHAR, message_key BIGINT, attribution VARCHAR, attributed_batch_id BIGINT,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR, key_org VARCHAR NOT NULL, PRIMARY KEY (key_org, event_id))""",
    """CREATE TABLE IF NOT EXISTS replies (
        reply_id VARCHAR NOT NULL, given_message_id VARCHAR, received_at TIMESTAMP NOT NULL,
        from_email VARCHAR, subject VARCHAR, text VARCHAR, headers JSON,
        message_id VARCHAR, message_key BIGINT, attribution VARCHAR, attributed_batch_id BIGINT,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR, key_org VARCHAR NOT NULL, PRIMARY KEY (key_org, reply_id))""",
    # One row per reply, (key_org, reply_id) as in replies.
    """CREATE TABLE IF NOT EXISTS reply_intents (
        reply_id VARCHAR NOT NULL, message_id VARCHAR, message_key BIGINT, received_at TIMESTAMP,
        is_auto_reply BOOLEAN NOT NULL, auto_reply_reason VARCHAR, sentiment VARCHAR NOT NULL,
        intent VARCHAR NOT NULL, confidence DOUBLE NOT NULL, classifier VARCHAR NOT NULL,
        batch_id BIGINT NOT NULL, classifier_version VARCHAR, key_org VARCHAR NOT NULL,
        PRIMARY KEY (key_org, reply_id))""",
    # Reviewed reply labels (landing/reply_labels, `flywheel replies correct`): the latest per
    # reply overrides the classifier in reply_intents (classifier 'human'). A label names its
    # reply by (key_org, reply_id): organization_id is the reply's organization as the label
    # names it (NULL: none; '': the reply that names none), key_org that or, for a label naming
    # none, the organization of the only reply with its id when it was ingested (warehouse/ingest.py).
    """CREATE TABLE IF NOT EXISTS reply_labels (
        label_id VARCHAR PRIMARY KEY, reply_id VARCHAR NOT NULL, intent VARCHAR NOT NULL,
        sentiment VARCHAR NOT NULL, labelled_at TIMESTAMP NOT NULL, labelled_by VARCHAR,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR, key_org VARCHAR NOT NULL)""",
    # Per-message running aggregate of email events; every column merges with
    # least/greatest/bit_or/+, so new events fold in without rereading old ones (see
    # warehouse/labels.py). status_last packs the latest delivery-status event: epoch
    # microseconds * 2, plus 1 for a bounce/drop (which so wins a tie with a delivery);
    # signals has a bit per human signal (labels.SIGNAL_BITS).
    """CREATE TABLE IF NOT EXISTS message_state (
        message_key BIGINT NOT NULL, delivered_first TIMESTAMP, status_last BIGINT,
        signals UTINYINT, machine_opens BIGINT NOT NULL, last_at TIMESTAMP)""",
    # The labels as stored, keyed by message_key, the funnel flags packed into one integer
    # (warehouse/label_layout.py). Readers use the views below.
    """CREATE TABLE IF NOT EXISTS packed_labels (
        message_key BIGINT NOT NULL, sent_at TIMESTAMP NOT NULL, flags USMALLINT NOT NULL,
        reply_sentiment VARCHAR, deal_value DOUBLE,
        machine_opens INTEGER, scanner_clicks INTEGER, auto_replies INTEGER,
        quality_score DOUBLE, is_mature BOOLEAN, last_event_at TIMESTAMP, label_run_id BIGINT)""",
    # message_labels: one row per label with every flag as a BOOLEAN (no join);
    # outcome_labels adds the message's identity columns from `messages`.
    f"""CREATE OR REPLACE VIEW message_labels AS
        SELECT message_key, sent_at, {_flag_columns("delivered", "bounced", "opened", "clicked", "replied")},
               reply_sentiment, {_flag_columns("positive_reply", "meeting_booked", "meeting_completed", "deal_closed")},
               deal_value, {_flag_columns("deal_lost", "unsubscribed", "spam_reported")},
               machine_opens, scanner_clicks, auto_replies,
               {stage_name_sql(unpacked_flag_sql)} AS stage, quality_score,
               (flags & {TERMINAL_MASK} <> 0) AS is_terminal, is_mature, last_event_at, label_run_id
        FROM packed_labels""",
    """CREATE OR REPLACE VIEW outcome_labels AS
        SELECT m.message_id, m.organization_id, m.campaign_id, m.lead_id, m.model_id, m.model_version,
               m.ab_group, m.task_type, l.sent_at, l.delivered, l.bounced, l.opened, l.clicked, l.replied,
               l.reply_sentiment, l.positive_reply, l.meeting_booked, l.meeting_completed, l.deal_closed,
               l.deal_value, l.deal_lost, l.unsubscribed, l.spam_reported, l.machine_opens, l.scanner_clicks,
               l.auto_replies, l.stage, l.quality_score, l.is_terminal, l.is_mature, l.last_event_at,
               l.label_run_id, l.message_key
        FROM message_labels l JOIN messages m USING (message_key)""",
    # Messages whose loaded rows a later batch replaced (a conflicting duplicate that wins, see
    # warehouse/ingest.py): the label run after batch_id refolds their state from all their
    # events, since a replaced event cannot be subtracted from message_state.
    """CREATE TABLE IF NOT EXISTS message_refolds (
        message_key BIGINT NOT NULL, batch_id BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS label_runs (
        label_run_id BIGINT PRIMARY KEY, as_of TIMESTAMP NOT NULL, from_batch BIGINT NOT NULL,
        to_batch BIGINT NOT NULL, full_relabel BOOLEAN NOT NULL, policy_fingerprint VARCHAR NOT NULL,
        policy JSON NOT NULL, touched_messages BIGINT NOT NULL, folded_events BIGINT NOT NULL,
        started_at TIMESTAMP NOT NULL, duration_s DOUBLE NOT NULL)""",
)


# Version 4 identifies a message by (organization_id, message_id): messages and message_keys
# are rebuilt with the organization in their key (an old key takes its message's organization;
# a key no message has claimed yet gets '', "not known yet"), and email events, CRM events and
# replies record the organization they name (NULL for the rows loaded before: not kept then).
# Message keys do not change, so labels and message_state stay valid.
_MIGRATE_TO_4_BEFORE = ("DROP VIEW IF EXISTS outcome_labels",
                          "ALTER TABLE messages RENAME TO _v2_messages",
                          "ALTER TABLE message_keys RENAME TO _v2_message_keys",
                          "ALTER TABLE email_events ADD COLUMN IF NOT EXISTS organization_id VARCHAR",
                          "ALTER TABLE crm_events ADD COLUMN IF NOT EXISTS organization_id VARCHAR",
                          "ALTER TABLE replies ADD COLUMN IF NOT EXISTS organization_id VARCHAR")
_MIGRATE_TO_4_AFTER = (
    "INSERT INTO messages SELECT * FROM _v2_messages",
    """INSERT INTO message_keys (organization_id, message_id, message_key)
       SELECT coalesce(m.organization_id, ''), k.message_id, k.message_key
       FROM _v2_message_keys k LEFT JOIN _v2_messages m USING (message_id)""",
    "DROP TABLE _v2_messages", "DROP TABLE _v2_message_keys")

# Version 5 identifies email events, CRM events, replies and their intents within an
# organization: each table is rebuilt with key_org (the organization the record names, '' for
# none) in its primary key, and a reviewed label names its reply's organization. Every row is
# kept: up to version 4 these ids were unique across organizations, so a row's key_org is its
# own organization_id, an intent's and a label's that of their reply ('' when the reply named
# none or has not landed). Message keys are unchanged, so labels and message_state stay valid.
ORGANIZATION_KEYS_SINCE = 5
# the rebuilt tables, in order: replies before the intents and labels that look theirs up
_ORGANIZATION_KEYED = {
    "email_events": "SELECT *, coalesce(organization_id, '') AS key_org FROM _unkeyed_email_events",
    "crm_events": "SELECT *, coalesce(organization_id, '') AS key_org FROM _unkeyed_crm_events",
    "replies": "SELECT *, coalesce(organization_id, '') AS key_org FROM _unkeyed_replies",
    "reply_intents": """SELECT i.*, coalesce(r.key_org, '') AS key_org
                        FROM _unkeyed_reply_intents i LEFT JOIN replies r USING (reply_id)""",
    "reply_labels": """SELECT l.*, coalesce(r.key_org, '') AS key_org
                       FROM _unkeyed_reply_labels l LEFT JOIN replies r USING (reply_id)""",
}


def _column_exists(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ? "
                       "AND schema_name = 'main' AND database_name = current_database()", [table, column]).fetchall()[0][0] > 0


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = 'main' "
                       "AND database_name = current_database()",
                       [name]).fetchall()[0][0] > 0


# The tables of the later stages (datasets, training, experiments). They were created by the
# modules that write them until schema 6; a warehouse of schema 5 or older gets them here, and
# the ab_test_results columns added since that table's first version are added in place.
PIPELINE_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS redacted_messages (
        message_key BIGINT NOT NULL, system_prompt VARCHAR, user_prompt VARCHAR, assistant VARCHAR NOT NULL,
        dedupe_key VARCHAR NOT NULL, industry VARCHAR, lead_role VARCHAR, redactions JSON,
        redacted_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS finetune_jobs (
        job_key VARCHAR PRIMARY KEY, backend VARCHAR NOT NULL, job_id VARCHAR, status VARCHAR NOT NULL,
        dataset_version VARCHAR NOT NULL, method VARCHAR NOT NULL, base_model VARCHAR NOT NULL, request JSON NOT NULL,
        fine_tuned_model VARCHAR, trained_tokens BIGINT, error VARCHAR,
        created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS model_registry (
        model_id VARCHAR PRIMARY KEY, family VARCHAR NOT NULL, organization_id VARCHAR, task_type VARCHAR NOT NULL,
        version VARCHAR NOT NULL, base_model VARCHAR NOT NULL, backend VARCHAR NOT NULL, method VARCHAR NOT NULL,
        job_id VARCHAR, job_key VARCHAR, status VARCHAR NOT NULL, traffic_pct DOUBLE NOT NULL DEFAULT 0,
        ab_group VARCHAR, dataset_version VARCHAR NOT NULL, training_examples BIGINT, positives BIGINT,
        deals_in_training BIGINT, hyperparameters JSON, trained_tokens BIGINT, mlflow_run_id VARCHAR,
        mlflow_model_version VARCHAR, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
        reply_rate DOUBLE, meeting_rate DOUBLE, close_rate DOUBLE, weighted_score DOUBLE, messages_sent BIGINT)""",
    """CREATE TABLE IF NOT EXISTS offline_evaluations (
        run_id VARCHAR, candidate VARCHAR, champion VARCHAR, judge VARCHAR, generator VARCHAR, prompts BIGINT,
        wins BIGINT, losses BIGINT, ties BIGINT, skipped BIGINT, win_rate DOUBLE, loss_rate DOUBLE,
        created_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS experiment_plans (
        allocation VARCHAR PRIMARY KEY, family VARCHAR, experiment_id VARCHAR, step VARCHAR, planned_leads DOUBLE,
        baseline_leads BIGINT, baseline_mean DOUBLE, baseline_var DOUBLE, planned_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS ab_test_results (
        evaluated_at TIMESTAMP, family VARCHAR, experiment_id VARCHAR, challenger VARCHAR, champion VARCHAR,
        decision VARCHAR, reason VARCHAR, srm_p_value DOUBLE, challenger_leads BIGINT, champion_leads BIGINT,
        metric VARCHAR, challenger_value DOUBLE, champion_value DOUBLE, lift DOUBLE, relative_lift DOUBLE,
        ci_low DOUBLE, ci_high DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, seq_low DOUBLE, seq_high DOUBLE,
        chance_to_win DOUBLE, expected_loss DOUBLE, exact_test BOOLEAN, arm VARCHAR, step VARCHAR, final BOOLEAN,
        planned_leads DOUBLE, variance_reduction DOUBLE, overall_decision VARCHAR)""",
)
_MIGRATE_TO_PIPELINE_TABLES = tuple(
    f"ALTER TABLE ab_test_results ADD COLUMN IF NOT EXISTS {name} {kind}"
    for name, kind in (("arm", "VARCHAR"), ("step", "VARCHAR"), ("final", "BOOLEAN"), ("planned_leads", "DOUBLE"),
                       ("variance_reduction", "DOUBLE"), ("overall_decision", "VARCHAR")))
PIPELINE_TABLES_SINCE = 6

# Version 7 adds feedback: people's 1-5 ratings of a message (landing/feedback, POST /feedback),
# keyed like email events by (key_org, feedback_id) and attached to the message of the organization
# they name by message_key. Ratings sit beside the outcome labels; labelling does not read them.
FEEDBACK_SINCE = 7
FEEDBACK_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS feedback (
        feedback_id VARCHAR NOT NULL, message_id VARCHAR NOT NULL, message_key BIGINT NOT NULL,
        rating UTINYINT NOT NULL, rater VARCHAR, comment VARCHAR, rated_at TIMESTAMP NOT NULL,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR, key_org VARCHAR NOT NULL, PRIMARY KEY (key_org, feedback_id))""",
)


# Every delivered message judged once per judge and criteria version (warehouse/message_judgements.py):
# a score of 0-100 with its dimension scores, or no score and the reason it could not be judged.
JUDGEMENTS_SINCE = 8
JUDGEMENTS_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS message_judgements (
        message_key BIGINT NOT NULL, judge VARCHAR NOT NULL, criteria_version VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL, score DOUBLE, dimensions JSON, unjudged_reason VARCHAR,
        reused BOOLEAN NOT NULL, judged_at TIMESTAMP NOT NULL,
        PRIMARY KEY (message_key, judge, criteria_version))""",
)

# Version 9: the LLM judge's columns on message_judgements (warehouse/message_judgements.py): the judge
# model, what the judgement cost (USD, exact from the reply's tokens and the model catalog), the calls
# it took, and its critique (reason, strengths, weaknesses, suggestions; or the error it was left with).
JUDGE_LLM_SINCE = 11
JUDGE_LLM_DDL: tuple[str, ...] = tuple(
    f"ALTER TABLE message_judgements ADD COLUMN IF NOT EXISTS {name} {kind}"
    for name, kind in (("judge_model", "VARCHAR"), ("cost_usd", "DECIMAL(38, 12)"), ("attempts", "INTEGER"),
                       ("critique", "JSON")))


# The AI council's preference pairs (POST /council -> landing/council_pairs -> ingestion): for one
# chat, the answer the judge preferred and one it scored at least the pair margin lower, with both
# models, scores, the judge and whether judge_calibration trusted it. The DPO dataset can include
# them (preference_pairs' include_council_pairs, off by default; trusted judges' pairs only).
COUNCIL_PAIRS_SINCE = 10
COUNCIL_PAIRS_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS council_pairs (
        pair_id VARCHAR NOT NULL, council_id VARCHAR NOT NULL, task_type VARCHAR NOT NULL, messages JSON NOT NULL,
        preferred_model VARCHAR NOT NULL, preferred VARCHAR NOT NULL, preferred_score DOUBLE NOT NULL,
        non_preferred_model VARCHAR NOT NULL, non_preferred VARCHAR NOT NULL, non_preferred_score DOUBLE NOT NULL,
        margin DOUBLE NOT NULL, judge VARCHAR NOT NULL, judge_trusted BOOLEAN NOT NULL, strategy VARCHAR NOT NULL,
        decided_at TIMESTAMP NOT NULL, source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR, key_org VARCHAR NOT NULL, PRIMARY KEY (key_org, pair_id))""",
)


# Every action of the control API and CLI (flywheel_pipeline/control.py): who (an admin key's id and
# fingerprint, or the OS user of the CLI; never a key), what, its parameters, when, the result and
# the Dagster run it launched; written before the action answers (warehouse/control_audit.py).
CONTROL_AUDIT_SINCE = 9
CONTROL_AUDIT_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS control_audit (
        audit_id VARCHAR PRIMARY KEY, acted_at TIMESTAMP NOT NULL, actor VARCHAR NOT NULL, key_fingerprint VARCHAR,
        channel VARCHAR NOT NULL, action VARCHAR NOT NULL, parameters JSON, result VARCHAR NOT NULL,
        detail VARCHAR, run_id VARCHAR, model_id VARCHAR, family VARCHAR)""",
)


# How well each judge predicts outcomes (warehouse/judge_calibration.py; rebuilt by each run of the
# judge_calibration asset), and what the offline evaluation gate decided with (which judge, or the
# outcomes when no judge is trusted).
CALIBRATION_SINCE = 12
CALIBRATION_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS judge_calibration (
        judge VARCHAR NOT NULL, criteria_version VARCHAR NOT NULL, task_type VARCHAR NOT NULL, metric VARCHAR NOT NULL,
        n BIGINT NOT NULL, positives BIGINT NOT NULL, rate DOUBLE, auc DOUBLE, auc_se DOUBLE, auc_low DOUBLE,
        auc_high DOUBLE, interval_level DOUBLE, spearman DOUBLE, spearman_p DOUBLE, quality_n BIGINT,
        gated BOOLEAN NOT NULL, trusted BOOLEAN NOT NULL, computed_at TIMESTAMP NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS judge_calibration_deciles (
        judge VARCHAR NOT NULL, criteria_version VARCHAR NOT NULL, task_type VARCHAR NOT NULL, decile INTEGER NOT NULL,
        n BIGINT NOT NULL, mean_score DOUBLE, min_score DOUBLE, max_score DOUBLE, reply_rate DOUBLE,
        positive_reply_rate DOUBLE, meeting_rate DOUBLE, computed_at TIMESTAMP NOT NULL)""",
    "ALTER TABLE offline_evaluations ADD COLUMN IF NOT EXISTS decided_by VARCHAR",
    "ALTER TABLE offline_evaluations ADD COLUMN IF NOT EXISTS judge_trusted BOOLEAN",
    "ALTER TABLE offline_evaluations ADD COLUMN IF NOT EXISTS gate_passed BOOLEAN",
    "ALTER TABLE offline_evaluations ADD COLUMN IF NOT EXISTS gate_reason VARCHAR",
)


# Version 9 adds prompt templates (warehouse/templates.py): the stored versions (immutable: new
# content is a new version) and their deployment (champion, challenger with its traffic share,
# archived), and records the template a message was written with (template_id, template_version,
# top-level fields of the sent-message log, or the older metadata.prompt_template/prompt_version).
TEMPLATES_SINCE = 13
# added right after the DDL too: a messages table rebuilt by an older migration takes its rows back
# with every column
MESSAGE_TEMPLATE_COLUMNS: tuple[str, ...] = (
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS template_id VARCHAR",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS template_version VARCHAR")
TEMPLATES_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS prompt_templates (
        template_id VARCHAR NOT NULL, version VARCHAR NOT NULL, task_type VARCHAR NOT NULL, text VARCHAR NOT NULL,
        content_sha256 VARCHAR NOT NULL, fields JSON NOT NULL, source VARCHAR NOT NULL, parent_version VARCHAR,
        rationale VARCHAR, created_at TIMESTAMP NOT NULL, PRIMARY KEY (template_id, version))""",
    """CREATE TABLE IF NOT EXISTS template_deployments (
        template_id VARCHAR NOT NULL, version VARCHAR NOT NULL, task_type VARCHAR NOT NULL, status VARCHAR NOT NULL,
        ab_group VARCHAR, traffic_pct DOUBLE NOT NULL DEFAULT 0, updated_at TIMESTAMP NOT NULL,
        PRIMARY KEY (template_id, version))""",
    *MESSAGE_TEMPLATE_COLUMNS,
)


# Ids handed out by the warehouse itself (DuckLake has no sequences): batch ids, message keys and
# label run ids, each the last one given. Taking one updates its row inside the writer's
# transaction, so on DuckLake two transactions that take ids conflict and one is retried:
# ids are unique, and batches commit in the order of their ids (labelling relies on that).
COUNTERS_SINCE = 14
COUNTERS_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS warehouse_counters (name VARCHAR NOT NULL, value BIGINT NOT NULL)""",
)
# each counter starts at the largest id in use (a warehouse of schema 8 and older had sequences)
_COUNTER_SEEDS = {"batch_id": "SELECT coalesce(max(batch_id), 0) FROM ingest_batches",
                  "message_key": "SELECT coalesce(max(message_key), 0) FROM message_keys",
                  "label_run_id": "SELECT coalesce(max(label_run_id), 0) FROM label_runs"}


def connect(path: str | Path, *, read_only: bool = False, memory_limit: str | None = None,
            threads: int | None = None, data_path: str | None = None,
            snapshot: int | None = None, migrate_schema: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (creating and migrating it unless read-only or ``migrate_schema`` is
    False, which refuses an outdated one instead): a DuckDB file, or a ``ducklake:`` URI with
    ``data_path`` (warehouse/lake.py; ``snapshot``: as of that DuckLake snapshot, read-only)."""
    database = str(path)
    if lake.is_lake(database):
        con = lake.connect(database, data_path, read_only=read_only, snapshot=snapshot,
                           memory_limit=memory_limit and _safe_setting(memory_limit), threads=threads)
    else:
        if snapshot is not None:
            raise ValueError("snapshots need the ducklake backend: a DuckDB file warehouse keeps no history "
                             "(FLYWHEEL_WAREHOUSE=ducklake:postgres:...)")
        if database != ":memory:" and not database.startswith("md:"):
            Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # personal data: owner only
        con = duckdb.connect(database, read_only=read_only)
        if not database.startswith("md:"):  # nothing is downloaded or auto-loaded at run time
            for setting in extensions.OFFLINE_CONFIG:
                con.execute(f"SET {setting} = false")
        con.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            con.execute(f"SET memory_limit = '{_safe_setting(memory_limit)}'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
    con.execute("SET enable_progress_bar = false")
    try:
        if not read_only and snapshot is None and migrate_schema:
            retry_on_conflict(lambda: migrate(con), "migrating the warehouse")
        else:
            _refuse_outdated(con, lake.describe(database))
    except BaseException:
        con.close()
        raise
    return con


def open_configured(*, read_only: bool = True, snapshot: int | None = None,
                    migrate_schema: bool = True) -> duckdb.DuckDBPyConnection:
    """The warehouse the environment names (paths.py: FLYWHEEL_WAREHOUSE, its data path and memory limit)."""
    from flywheel_pipeline import paths

    return connect(paths.warehouse_database(), read_only=read_only, data_path=paths.warehouse_data_path(),
                   memory_limit=paths.duckdb_memory_limit(), snapshot=snapshot, migrate_schema=migrate_schema)


def _ddl(con: duckdb.DuckDBPyConnection, statement: str, on_lake: bool) -> None:
    statement = lake.lake_ddl(statement) if on_lake else statement
    if statement is not None:
        con.execute(statement)


class OutdatedWarehouse(RuntimeError):
    """A warehouse opened read-only that this code has not migrated yet (its queries would fail)."""


def _refuse_outdated(con: duckdb.DuckDBPyConnection, database: str) -> None:
    """(No check on a warehouse without schema_info: nothing to read yet.)"""
    has_info = _table_exists(con, "schema_info")
    rows = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchall() if has_info else []
    if rows and int(rows[0][0]) < SCHEMA_VERSION:
        raise OutdatedWarehouse(f"the warehouse {database} has schema {rows[0][0]}, this code reads {SCHEMA_VERSION}: "
                                "run `flywheel refresh` once to migrate it (read-only commands cannot)")


def _safe_setting(value: str) -> str:
    if not all(ch.isalnum() or ch in ".% " for ch in value):
        raise ValueError(f"invalid setting value {value!r}")
    return value


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Create the schema once; a warehouse already at SCHEMA_VERSION is left untouched, so
    the many short-lived connections of a run do not re-run DDL (or write the catalog)."""
    # fetchall: a result left half-read blocks the next registration of a data frame on this connection
    has_info = _table_exists(con, "schema_info")
    rows = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchall() if has_info else []
    row = rows[0] if rows else None
    if row is not None:
        if int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"warehouse schema version {row[0]} is newer than this code "
                               f"({SCHEMA_VERSION}); upgrade flywheel_pipeline")
        if int(row[0]) == SCHEMA_VERSION:
            return
    migrating_from = int(row[0]) if row is not None else None
    on_lake = lake.is_lake_connection(con)  # no keys, sequences or user types
    with transaction(con):
        if migrating_from == 1:
            for statement in _MIGRATE_FROM_1:
                con.execute(statement)
        if migrating_from is not None and migrating_from < 3:
            for statement in _MIGRATE_TO_3:
                con.execute(statement)
        if migrating_from is not None and migrating_from < 4:
            for statement in _MIGRATE_TO_4_BEFORE:
                con.execute(statement)
        rebuilt = []
        if migrating_from is not None and migrating_from < ORGANIZATION_KEYS_SINCE:
            # (reply_labels came with version 3: older warehouses have none to keep)
            # by the tables, not only the number: a table that already has key_org is keyed
            rebuilt = [table for table in _ORGANIZATION_KEYED
                       if _table_exists(con, table) and not _column_exists(con, table, "key_org")]
            for table in rebuilt:
                con.execute(f"ALTER TABLE {table} RENAME TO _unkeyed_{table}")
        for statement in DDL:
            _ddl(con, statement, on_lake)
        for statement in MESSAGE_TEMPLATE_COLUMNS:  # before a rebuilt messages table takes its old rows back
            _ddl(con, statement, on_lake)
        if migrating_from is not None and migrating_from < 4:
            for statement in _MIGRATE_TO_4_AFTER:
                con.execute(statement)
        for table in rebuilt:
            con.execute(f"INSERT INTO {table} BY NAME {_ORGANIZATION_KEYED[table]}")
            con.execute(f"DROP TABLE _unkeyed_{table}")
        for statement in PIPELINE_DDL:
            _ddl(con, statement, on_lake)
        if migrating_from is not None and migrating_from < PIPELINE_TABLES_SINCE:
            for statement in _MIGRATE_TO_PIPELINE_TABLES:
                con.execute(statement)
        # additive and idempotent: whenever migrating
        for statement in (*FEEDBACK_DDL, *JUDGEMENTS_DDL, *CONTROL_AUDIT_DDL, *COUNCIL_PAIRS_DDL, *JUDGE_LLM_DDL,
                          *CALIBRATION_DDL, *TEMPLATES_DDL, *COUNTERS_DDL):
            _ddl(con, statement, on_lake)
        for name, seed in _COUNTER_SEEDS.items():
            con.execute(f"INSERT INTO warehouse_counters SELECT ?, ({seed}) "
                        "WHERE NOT EXISTS (SELECT 1 FROM warehouse_counters WHERE name = ?)", [name, name])
        if migrating_from == 1:
            set_info(con, REBUILD_LABELS_KEY, "schema 1 -> 2")
        set_info(con, "schema_version", str(SCHEMA_VERSION))


def set_info(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    """Set one schema_info entry (no INSERT OR REPLACE: DuckLake has no keys)."""
    con.execute("DELETE FROM schema_info WHERE key = ?", [key])
    con.execute("INSERT INTO schema_info VALUES (?, ?)", [key, value])


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def take_ids(con: duckdb.DuckDBPyConnection, counter: str, n: int = 1) -> int:
    """Reserve ``n`` ids of ``counter`` (warehouse_counters) in the open transaction; returns
    the first (the reserved ids are first .. first + n - 1)."""
    con.execute("UPDATE warehouse_counters SET value = value + ? WHERE name = ?", [int(n), counter])
    rows = con.execute("SELECT value FROM warehouse_counters WHERE name = ?", [counter]).fetchall()
    if len(rows) != 1:
        raise RuntimeError(f"warehouse_counters has {len(rows)} rows for {counter!r}, expected one")
    return int(rows[0][0]) - int(n) + 1


def new_batch(con: duckdb.DuckDBPyConnection, kind: str, source: str | None = None) -> int:
    batch_id = take_ids(con, "batch_id")
    con.execute("INSERT INTO ingest_batches (batch_id, kind, source, started_at) "
                "VALUES (?, ?, ?, now()::TIMESTAMP)", [batch_id, kind, source])
    return int(batch_id)


def max_batch(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT coalesce(max(batch_id), 0) FROM ingest_batches").fetchone()[0])


def connect_waiting(path: str | Path, *, read_only: bool = False, timeout_s: float = 60.0,
                    data_path: str | None = None) -> duckdb.DuckDBPyConnection:
    """``connect``, waiting (up to ``timeout_s``) while another process holds the file's lock: DuckDB
    allows one writing process, and the Dagster runs' connections are short-lived. Raises
    ``duckdb.IOException`` past the timeout (the control API answers 503 ``warehouse_busy``)."""
    import time

    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return connect(path, read_only=read_only, data_path=data_path)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
