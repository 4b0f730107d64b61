from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.label_policy import LabelPolicy
from flywheel_pipeline.warehouse.ingest import attribute_unlinked, ingest_source
from flywheel_pipeline.warehouse.labels import refresh_labels
from flywheel_pipeline.warehouse.reply_intents import classify_new_replies
from flywheel_pipeline.warehouse.schema import connect

REPO = Path(__file__).resolve().parents[1]  # the checkout

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def _no_leftover_dagster_instance():
    """Each test starts with no Dagster instance as the current definitions-state storage. An
    instance that an earlier test left undisposed (dg.materialize's ephemeral one, say) stays the
    current storage after the garbage collector has taken it, and loading definitions then fails
    with "Attempted to resolve undefined DagsterInstance weakref" (a test-process artefact: the
    flywheel's processes load their definitions once)."""
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


BACKENDS = ("file", "ducklake")


def pytest_addoption(parser):
    parser.addoption("--warehouse-backend", choices=BACKENDS, default=None,
                     help="run every warehouse test on this backend (default: file, and both for tests "
                          "marked both_backends)")


def pytest_generate_tests(metafunc):
    """Tests that use the warehouse (the ``con``, ``home`` or ``warehouse_target`` fixtures) run on
    --warehouse-backend; without it, on the file backend, and also on ducklake where marked
    ``both_backends``."""
    if "warehouse_backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--warehouse-backend")
    if chosen:
        backends = [chosen]
    elif metafunc.definition.get_closest_marker("both_backends"):
        backends = list(BACKENDS)
    else:
        backends = ["file"]
    metafunc.parametrize("warehouse_backend", backends, indirect=True)


@pytest.fixture
def warehouse_backend(request) -> str:
    return getattr(request, "param", "file")


@pytest.fixture
def warehouse_target(warehouse_backend, tmp_path):
    """The test's warehouse: a DuckDB file under tmp_path, or a scratch DuckLake (PostgreSQL
    catalog, created and dropped per test; skipped with the reason when PostgreSQL is absent)."""
    from flywheel_pipeline_tests import lake

    if warehouse_backend == "file":
        yield lake.Target("file", str(tmp_path / "warehouse.duckdb"))
        return
    reason = lake.postgres_reason()
    if reason:
        pytest.skip(reason)
    with lake.scratch_lake(tmp_path / "lake-data") as target:
        yield target


@pytest.fixture
def lake_target(tmp_path):
    """A scratch DuckLake (PostgreSQL catalog created and dropped, data in tmp_path), whatever the
    backend under test; skipped with the reason when PostgreSQL is absent."""
    from flywheel_pipeline_tests import lake

    reason = lake.postgres_reason()
    if reason:
        pytest.skip(reason)
    with lake.scratch_lake(tmp_path / "lake-data") as target:
        yield target


@pytest.fixture
def home(tmp_path, monkeypatch, warehouse_target) -> Path:
    """An isolated FLYWHEEL_HOME (and DAGSTER_HOME under it) for one test; on the ducklake
    backend FLYWHEEL_WAREHOUSE names the test's scratch lake."""
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "fw"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "fw" / "dagster"))
    monkeypatch.delenv("FLYWHEEL_ENV", raising=False)
    monkeypatch.delenv("FLYWHEEL_WAREHOUSE", raising=False)
    monkeypatch.delenv("FLYWHEEL_WAREHOUSE_DATA_PATH", raising=False)
    if warehouse_target.backend != "file":
        for name, value in warehouse_target.env().items():
            monkeypatch.setenv(name, value)
    return tmp_path / "fw"


@pytest.fixture
def landing(tmp_path) -> Path:
    return tmp_path / "landing"


@pytest.fixture
def con(warehouse_target):
    connection = connect(warehouse_target.database, data_path=warehouse_target.data_path)
    yield connection
    connection.close()


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def message(mid: str, *, lead: str = "lead-1", sent: datetime = T0, org: str = "org-1",
            body: str = "Hi Ada, see https://x.example/a and https://x.example/b", **extra) -> dict:
    return {"message_id": mid, "organization_id": org, "campaign_id": "camp-1", "lead_id": lead,
            "recipient_email": f"{lead}@acme.example", "channel": "email", "sent_at": iso(sent),
            "model_id": "model-a", "model_version": "1.0.0", "ab_group": "control", "task_type": "cold_email",
            "system_prompt": "sys", "user_prompt": "user", "subject": "s", "body": body,
            "framework": "AIDA", "tone": "friendly", **extra}


_seq = iter(range(1, 10_000_000))


def sg(mid: str, event: str, at: datetime, *, sg_event_id: str | None = None, **extra) -> dict:
    return {"sg_event_id": sg_event_id or f"ev-{next(_seq)}", "message_id": mid, "event": event,
            "timestamp": int(at.timestamp()), "email": "lead@acme.example", **extra}


def crm(event_id: str, type_: str, at: datetime, **ref) -> dict:
    return {"event_id": event_id, "source": "hubspot", "type": type_, "occurred_at": iso(at), **ref}


def reply(reply_id: str, mid: str | None, at: datetime, text: str, headers: dict | None = None,
          subject: str = "Re: hello", **extra) -> dict:
    record = {"reply_id": reply_id, "received_at": iso(at), "from_email": "lead-1@acme.example",
              "subject": subject, "text": text, "headers": headers or {}, **extra}
    if mid is not None:
        record["message_id"] = mid
    return record


def run_pipeline(con, landing: Path, *, as_of: datetime = T0 + timedelta(days=30),
                 policy: LabelPolicy | None = None, full: bool = False):
    """Ingest everything landed, attribute, classify and label: what the refresh job does."""
    policy = policy or LabelPolicy()
    results = {s: ingest_source(con, landing, s) for s in landing_zone.SOURCES}
    attribute_unlinked(con, "crm_events", policy)
    attribute_unlinked(con, "replies", policy)
    classify_new_replies(con)
    results["labels"] = refresh_labels(con, policy, as_of=as_of, full=full)
    return results


# The tables schema 5 rebuilt, as schema 4 created them (flywheel_pipeline/warehouse/schema.py
# up to version 4: the source's id alone was the key).
SCHEMA_4_TABLES = {
    "email_events": """CREATE TABLE email_events (
        sg_event_id VARCHAR PRIMARY KEY, message_id VARCHAR NOT NULL, message_key BIGINT NOT NULL,
        event sendgrid_event NOT NULL, occurred_at TIMESTAMP NOT NULL, email VARCHAR,
        machine_open BOOLEAN, url VARCHAR, bounce_type VARCHAR, reason VARCHAR, sg_message_id VARCHAR,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR)""",
    "crm_events": """CREATE TABLE crm_events (
        event_id VARCHAR PRIMARY KEY, source VARCHAR, type VARCHAR NOT NULL,
        given_message_id VARCHAR, lead_id VARCHAR, email VARCHAR,
        occurred_at TIMESTAMP NOT NULL, deal_value DOUBLE, currency VARCHAR,
        message_id VARCHAR, message_key BIGINT, attribution VARCHAR, attributed_batch_id BIGINT,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR)""",
    "replies": """CREATE TABLE replies (
        reply_id VARCHAR PRIMARY KEY, given_message_id VARCHAR, received_at TIMESTAMP NOT NULL,
        from_email VARCHAR, subject VARCHAR, text VARCHAR, headers JSON,
        message_id VARCHAR, message_key BIGINT, attribution VARCHAR, attributed_batch_id BIGINT,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL,
        organization_id VARCHAR)""",
    "reply_intents": """CREATE TABLE reply_intents (
        reply_id VARCHAR PRIMARY KEY, message_id VARCHAR, message_key BIGINT, received_at TIMESTAMP,
        is_auto_reply BOOLEAN NOT NULL, auto_reply_reason VARCHAR, sentiment VARCHAR NOT NULL,
        intent VARCHAR NOT NULL, confidence DOUBLE NOT NULL, classifier VARCHAR NOT NULL,
        batch_id BIGINT NOT NULL, classifier_version VARCHAR)""",
    "reply_labels": """CREATE TABLE reply_labels (
        label_id VARCHAR PRIMARY KEY, reply_id VARCHAR NOT NULL, intent VARCHAR NOT NULL,
        sentiment VARCHAR NOT NULL, labelled_at TIMESTAMP NOT NULL, labelled_by VARCHAR,
        source_file VARCHAR NOT NULL, line_no BIGINT NOT NULL, batch_id BIGINT NOT NULL)""",
}


def as_schema_4(con) -> None:
    """Turn a warehouse back into what schema 4 left: email events, CRM events, replies, reply
    intents and reviewed labels keyed by their id alone, with no key_org (their ids must be
    unique across organizations, as schema 4 made them)."""
    for table, ddl in SCHEMA_4_TABLES.items():
        columns = [c for (c,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND column_name NOT IN ('key_org') "
            "AND NOT (table_name = 'reply_labels' AND column_name = 'organization_id') ORDER BY column_index",
            [table]).fetchall()]
        con.execute(f"CREATE TABLE _old AS SELECT {', '.join(columns)} FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(ddl)
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _old")
        con.execute("DROP TABLE _old")
    con.execute("UPDATE schema_info SET value = '4' WHERE key = 'schema_version'")


def label(con, mid: str) -> dict:
    cur = con.execute("SELECT * FROM outcome_labels WHERE message_id = ?", [mid])
    row = cur.fetchone()
    assert row is not None, f"no label for {mid}"
    return dict(zip([d[0] for d in cur.description], row))


def pytest_sessionfinish(session, exitstatus):
    # Collect reference cycles that still hold DuckDB objects (e.g. via Dagster contexts)
    # before interpreter shutdown, where duckdb's bindings would report them as leaks.
    import gc

    gc.collect()
