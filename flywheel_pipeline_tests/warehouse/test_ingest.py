"""Exactly-once ingestion, duplicates, order independence and quarantine (real DuckDB files)."""

from __future__ import annotations

import json
import random
import shutil
from datetime import date

import pytest

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.warehouse.ingest import MAX_FILE_BYTES, ingest_source
from flywheel_pipeline.warehouse.schema import SCHEMA_VERSION, connect
from flywheel_pipeline_tests.conftest import T0, as_schema_4, label, message, run_pipeline, sg

LABEL_COLUMNS = ("message_id, delivered, bounced, opened, clicked, replied, reply_sentiment, positive_reply, "
                 "meeting_booked, meeting_completed, deal_closed, deal_value, unsubscribed, spam_reported, "
                 "stage, quality_score, is_mature")


def labels(con):
    return con.execute(f"SELECT {LABEL_COLUMNS} FROM outcome_labels ORDER BY message_id").fetchall()


def counts(con):
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("messages", "email_events", "crm_events", "replies", "quarantine", "landing_files")}


@pytest.mark.both_backends
def test_the_same_file_twice_is_ingested_once(con, landing, tmp_path):
    path = write_jsonl(landing, "sendgrid", [sg("m1", "delivered", T0, sg_event_id="a"),
                                             sg("m1", "open", T0, sg_event_id="b")])
    first = ingest_source(con, landing, "sendgrid")
    assert (first.files, first.accepted, first.duplicates) == (1, 2, 0)
    again = ingest_source(con, landing, "sendgrid")
    assert (again.files, again.accepted) == (0, 0)
    # the same bytes landed again under another name: every event is a duplicate
    shutil.copy(path, landing / "sendgrid" / "copy.jsonl")
    copy = ingest_source(con, landing, "sendgrid")
    assert (copy.files, copy.accepted, copy.duplicates) == (1, 0, 2)
    assert con.execute("SELECT count(*) FROM email_events").fetchone()[0] == 2


def test_identical_copies_in_two_files_and_within_a_file_count_once(con, landing):
    event = sg("m1", "open", T0, sg_event_id="x", url="u")
    write_jsonl(landing, "sendgrid", [event, event], name="a.jsonl")
    write_jsonl(landing, "sendgrid", [event], name="b.jsonl")
    result = ingest_source(con, landing, "sendgrid")
    assert (result.lines, result.accepted, result.duplicates, result.quarantined) == (3, 1, 2, 0)
    assert con.execute("SELECT url, source_file, line_no FROM email_events").fetchall() == [("u", "a.jsonl", 1)]


@pytest.mark.both_backends
def test_conflicting_copies_keep_the_record_whose_canonical_json_sorts_first(con, landing):
    write_jsonl(landing, "sendgrid", [sg("m1", "open", T0, sg_event_id="x", url="second"),
                                      sg("m1", "open", T0, sg_event_id="x", url="first")], name="a.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m1", "open", T0, sg_event_id="x", url="third")], name="b.jsonl")
    result = ingest_source(con, landing, "sendgrid")
    assert (result.lines, result.accepted, result.duplicates, result.quarantined) == (3, 1, 0, 2)
    assert result.quarantine_reasons == {"conflicting_duplicate": 2}
    assert con.execute("SELECT url, source_file, line_no FROM email_events").fetchall() == [("first", "a.jsonl", 2)]
    assert con.execute("SELECT source_file, line_no, reason FROM quarantine ORDER BY 1, 2").fetchall() == [
        ("a.jsonl", 1, "conflicting_duplicate: sg_event_id x, kept the record of a.jsonl:2"),
        ("b.jsonl", 1, "conflicting_duplicate: sg_event_id x, kept the record of a.jsonl:2")]


def test_changed_file_is_reported_not_reread(con, landing):
    path = write_jsonl(landing, "messages", [message("m1")])
    ingest_source(con, landing, "messages")
    with open(path, "a") as fh:  # someone breaks the immutability contract
        fh.write(json.dumps(message("m2")) + "\n")
    result = ingest_source(con, landing, "messages")
    assert result.changed_files == [path.name] and result.accepted == 0


@pytest.mark.both_backends
def test_malformed_lines_are_quarantined_with_reason_and_line_and_the_rest_loads(con, landing):
    good = message("m1")
    lines = [good, "{not json", "[1, 2]", {**message("m2"), "sent_at": "yesterday-ish"},
             {k: v for k, v in message("m3").items() if k != "lead_id"}, message("m4"), ""]
    write_jsonl(landing, "messages", lines[:-1], name="msgs.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m1", "open", T0),
                                      {"event": "open", "timestamp": int(T0.timestamp()), "sg_event_id": "z"},
                                      {**sg("m1", "open", T0), "timestamp": "soon"}], name="sg.jsonl")
    write_jsonl(landing, "crm", [{"event_id": "c1", "type": "deal_closed", "occurred_at": "2026-01-01T00:00:00Z"},
                                 {"event_id": "c2", "type": "deal_won", "occurred_at": "2026-01-01T00:00:00Z",
                                  "lead_id": "l"},
                                 {"event_id": "c3", "type": "deal_closed", "occurred_at": "2026-01-01T00:00:00Z",
                                  "lead_id": "l", "deal_value": "lots"}], name="crm.jsonl")
    write_jsonl(landing, "replies", [{"reply_id": "r1", "received_at": "2026-01-01T00:00:00Z"},
                                     {"reply_id": "r2", "received_at": "2026-01-01T00:00:00Z", "message_id": "m1",
                                      "headers": "X-Autoreply: yes"}], name="rep.jsonl")
    run_pipeline(con, landing)
    quarantined = con.execute("SELECT source, source_file, line_no, reason FROM quarantine "
                              "ORDER BY source, line_no").fetchall()
    assert quarantined == [
        ("crm", "crm.jsonl", 1, "unattributable: no message_id, lead_id or email"),
        ("crm", "crm.jsonl", 2, "unknown type: deal_won"),
        ("crm", "crm.jsonl", 3, "invalid deal_value"),
        ("messages", "msgs.jsonl", 2, "malformed JSON"),
        ("messages", "msgs.jsonl", 3, "not a JSON object"),
        ("messages", "msgs.jsonl", 4, "invalid sent_at: not an ISO 8601 timestamp"),
        ("messages", "msgs.jsonl", 5, "missing lead_id"),
        ("replies", "rep.jsonl", 1, "unattributable: no message_id or from_email"),
        ("replies", "rep.jsonl", 2, "invalid headers: not an object"),
        ("sendgrid", "sg.jsonl", 2, "unattributable: no message_id custom arg"),
        ("sendgrid", "sg.jsonl", 3, "invalid timestamp: not unix seconds"),
    ]
    assert con.execute("SELECT raw_line FROM quarantine WHERE line_no = 2 AND source = 'messages'").fetchone() == \
        ("{not json",)
    assert sorted(r[0] for r in con.execute("SELECT message_id FROM messages").fetchall()) == ["m1", "m4"]
    files = con.execute("SELECT file_name, lines, valid_lines, quarantined FROM landing_files "
                        "WHERE source = 'messages'").fetchall()
    assert files == [("msgs.jsonl", 6, 2, 4)]


def test_windows_line_endings_a_byte_order_mark_and_blank_lines_are_tolerated(con, landing):
    lines = [json.dumps(message("m1")), "", "   ", json.dumps(message("m2")), "{broken"]
    (landing / "messages").mkdir(parents=True)
    (landing / "messages" / "excel-export.jsonl").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    result = ingest_source(con, landing, "messages")
    assert (result.lines, result.accepted, result.quarantined) == (3, 2, 1)
    assert con.execute("SELECT line_no, reason, raw_line FROM quarantine").fetchall() == [
        (5, "malformed JSON", "{broken")]
    assert con.execute("SELECT message_id, line_no FROM messages ORDER BY 1").fetchall() == [("m1", 1), ("m2", 4)]


def test_lines_that_are_not_utf8_are_quarantined_and_the_rest_of_the_chunk_loads(con, landing):
    """DuckDB's read_text refuses a file that is not UTF-8; the chunk is then read as bytes and
    only the offending line is quarantined, its bytes shown escaped."""
    write_jsonl(landing, "messages", [message("m1")], name="a-utf8.jsonl")
    latin1 = json.dumps(message("m3", body="Grüße aus Köln"), ensure_ascii=False).encode("latin-1")
    utf8 = json.dumps(message("m4", body="Grüße aus Köln"), ensure_ascii=False).encode()
    (landing / "messages" / "b-mixed.jsonl").write_bytes(
        "\ufeff".encode() + json.dumps(message("m2")).encode() + b"\r\n" + latin1 + b"\r\n\r\n" + utf8 + b"\n")
    result = ingest_source(con, landing, "messages")
    assert (result.files, result.lines, result.accepted, result.quarantined) == (2, 4, 3, 1)
    [(line_no, reason, raw)] = con.execute("SELECT line_no, reason, raw_line FROM quarantine").fetchall()
    assert (line_no, reason) == (2, "not UTF-8 text") and "Gr\\xFC\\xDFe aus K\\xF6ln" in raw
    assert con.execute("SELECT message_id, line_no, body FROM messages ORDER BY 1").fetchall() == [
        ("m1", 1, message("m1")["body"]), ("m2", 1, message("m2")["body"]), ("m4", 4, "Grüße aus Köln")]


def test_a_file_too_large_to_read_is_quarantined_whole_and_blocks_nothing(con, landing):
    """DuckDB reads a file into one string of at most 4 GiB: a larger landing file is refused
    whole with the reason (line 0), recorded so refreshes do not retry it, and the files beside
    it load; its contents, split into new files, then load as usual."""
    write_jsonl(landing, "sendgrid", [sg("m1", "delivered", T0, sg_event_id="a")], name="a-small.jsonl")
    huge = landing / "sendgrid" / "b-backfill.jsonl"
    with open(huge, "wb") as fh:  # sparse: its size is all that is looked at
        fh.truncate(MAX_FILE_BYTES + 1)
    first = ingest_source(con, landing, "sendgrid")
    assert (first.files, first.accepted, first.quarantined) == (2, 1, 1)
    assert first.quarantine_reasons == {"file too large to read": 1}
    assert con.execute("SELECT source_file, line_no, reason LIKE 'file too large to read: 4.0 GiB, %split it%', "
                       "raw_line FROM quarantine").fetchall() == [("b-backfill.jsonl", 0, True, None)]
    assert con.execute("SELECT file_name, lines, quarantined FROM landing_files ORDER BY 1").fetchall() == [
        ("a-small.jsonl", 1, 0), ("b-backfill.jsonl", 0, 1)]
    again = ingest_source(con, landing, "sendgrid")
    assert (again.files, again.quarantined) == (0, 0)
    huge.unlink()
    write_jsonl(landing, "sendgrid", [sg("m1", "open", T0, sg_event_id="b")], name="b-backfill-part-1.jsonl")
    assert ingest_source(con, landing, "sendgrid").accepted == 1


def _world(tmp_path, **overrides):
    cfg = SimConfig(seed=11, days=40, end=date(2026, 6, 1), organizations=2, leads_per_org=150,
                    messages_per_day=25, **overrides)
    landing = tmp_path / "world"
    simulate(landing, cfg)
    return landing


def test_ingestion_is_independent_of_file_order_and_line_order(tmp_path):
    """The same world, landed once in day order and once with every file's lines shuffled and
    the files ingested in reverse order, one at a time, labels identically."""
    world = _world(tmp_path)
    as_of = T0.replace(year=2026, month=6, day=1)
    a = connect(tmp_path / "a.duckdb")
    run_pipeline(a, world, as_of=as_of)

    rng = random.Random(3)
    shuffled = tmp_path / "shuffled"
    b = connect(tmp_path / "b.duckdb")
    files = sorted(world.glob("*/*.jsonl"), reverse=True)
    for path in files:
        lines = path.read_text().splitlines()
        rng.shuffle(lines)
        write_jsonl(shuffled, path.parent.name, lines, name=path.name)
        if rng.random() < 0.3:  # refresh part-way: the order of runs must not matter either
            run_pipeline(b, shuffled, as_of=as_of)
    run_pipeline(b, shuffled, as_of=as_of)
    assert len(labels(a)) > 500
    assert labels(a) == labels(b)
    ca, cb = counts(a), counts(b)
    assert ca == cb


def test_incremental_refreshes_equal_a_full_relabel(tmp_path):
    """Land a simulated world day by day with a refresh after each day; the incremental labels
    must equal a full rebuild from all events."""
    world = _world(tmp_path)
    staged = tmp_path / "staged"
    con = connect(tmp_path / "inc.duckdb")
    days = sorted({p.name[-len("2026-05-01.jsonl"):-len(".jsonl")] for p in world.glob("*/*.jsonl")})
    assert len(days) == 40
    as_of = T0.replace(year=2026, month=6, day=1)
    for day in days:
        for path in world.glob(f"*/*-{day}.jsonl"):
            write_jsonl(staged, path.parent.name, path.read_text().splitlines(), name=path.name)
        run_pipeline(con, staged, as_of=as_of)
    incremental = labels(con)
    result = run_pipeline(con, staged, as_of=as_of, full=True)["labels"]
    assert result.full_relabel and result.folded_events > 0
    assert incremental == labels(con)
    runs = con.execute("SELECT count(*) FILTER (full_relabel), count(*) FROM label_runs").fetchone()
    assert runs == (2, 41)  # the first run and the explicit one were full; 39 were incremental


def test_the_fold_uses_a_perfect_hash_table_only_within_the_memory_budget(tmp_path, monkeypatch):
    """The full relabel's fold groups by message_key with DuckDB's perfect hash aggregate when
    (threads + 1) x key range x slot size fits a quarter of memory_limit, else with the hash
    aggregate; the labels are the same either way; a failed fold raises its own error and the
    setting is put back."""
    import duckdb

    from flywheel_pipeline.warehouse import labels as labelling

    con = connect(tmp_path / "w.duckdb")
    as_of = T0.replace(year=2026, month=6, day=1)
    run_pipeline(con, _world(tmp_path), as_of=as_of)
    con.execute("SET memory_limit = '1GB'")
    # DuckDB's own threshold (12 bits) would cover this small world's keys: lowered, as a large one's
    con.execute("SET perfect_ht_threshold = 4")
    assert labelling.memory_limit_bytes(con) == int(953.6 * 2**20)  # DuckDB reports "953.6 MiB"
    keys = con.execute("SELECT max(message_key) - min(message_key) + 2 FROM message_keys").fetchone()[0]
    tables = int(con.execute("SELECT current_setting('threads')").fetchone()[0]) + 1
    budget = labelling.PERFECT_HASH_MEMORY_SHARE * labelling.memory_limit_bytes(con)
    fold = labelling.render_fold_sql(after_batch=0, up_to_batch=10**9)

    def threshold() -> int:
        return int(con.execute("SELECT current_setting('perfect_ht_threshold')").fetchone()[0])

    def plan(enabled: bool = True) -> str:
        with labelling.dense_key_grouping(con, enabled=enabled):
            return con.execute("EXPLAIN " + fold).fetchall()[0][1]

    def plan_and_labels():
        explained = plan()
        labelling.refresh_labels(con, as_of=as_of, full=True)
        return explained, labels(con)

    roomy_plan, roomy_labels = plan_and_labels()
    # slots so large that the same key range no longer fits a quarter of the 1 GB limit
    slot_bytes = int(budget / (tables * (1 << int(keys).bit_length()))) + 1
    monkeypatch.setattr(labelling, "PERFECT_HASH_SLOT_BYTES", slot_bytes)
    tight_plan, tight_labels = plan_and_labels()
    assert "PERFECT_HASH_GROUP_BY" in roomy_plan
    assert "PERFECT_HASH_GROUP_BY" not in tight_plan and "HASH_GROUP_BY" in tight_plan
    assert roomy_labels == tight_labels and len(roomy_labels) > 500
    monkeypatch.setattr(labelling, "PERFECT_HASH_SLOT_BYTES", slot_bytes - 1)  # just within: perfect again
    assert "PERFECT" in plan() and threshold() == 4
    assert "PERFECT" not in plan(enabled=False)  # incremental runs keep the hash aggregate
    # a fold that fails inside the label run's transaction: its own error, the setting put back
    monkeypatch.setattr(labelling, "render_fold_sql", lambda **_: "SELECT error('fold failed')")
    with pytest.raises(duckdb.InvalidInputException, match="fold failed"):
        labelling.refresh_labels(con, as_of=as_of, full=True)
    assert threshold() == 4 and labels(con) == roomy_labels


def test_a_warehouse_from_newer_code_is_refused(tmp_path):
    import pytest

    con = connect(tmp_path / "w.duckdb")
    con.execute("UPDATE schema_info SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(RuntimeError, match="newer than this code"):
        connect(tmp_path / "w.duckdb")


def test_sql_labels_agree_with_the_reference_policy(tmp_path):
    """Every label of a simulated world: the SQL's stage and score equal core.label_policy's
    reference functions applied to the label's own flags."""
    from flywheel_pipeline.core.label_policy import LabelPolicy, deepest_stage, score_stage

    con = connect(tmp_path / "w.duckdb")
    run_pipeline(con, _world(tmp_path), as_of=T0.replace(year=2026, month=6, day=1))
    rows = con.execute("""SELECT delivered, bounced, opened, clicked, replied, positive_reply, meeting_booked,
                                 meeting_completed, deal_closed, deal_value, spam_reported, unsubscribed, stage,
                                 quality_score FROM outcome_labels""").fetchall()
    policy = LabelPolicy()
    stages = set()
    for (delivered, bounced, opened, clicked, replied, positive, booked, completed, closed, value, spam, unsub,
         stage, score) in rows:
        expected = deepest_stage(delivered=delivered, bounced=bounced, opened=opened, clicked=clicked,
                                 replied=replied, positive_reply=positive, meeting_booked=booked,
                                 meeting_completed=completed, deal_closed=closed)
        negative = spam or (unsub and not (booked or closed))
        assert (stage, score) == (expected, score_stage(policy, expected, deal_value=value, negative=negative))
        stages.add(stage)
    assert len(rows) > 500 and len(stages) >= 8  # the world exercises nearly every stage


def test_a_schema_1_warehouse_is_migrated_and_relabelled_in_full(tmp_path):
    """Schema 1 stored labels unpacked in a message_labels table: opening it drops the old
    label tables, keeps the ingested data, and the next refresh rebuilds the labels in full."""
    world = _world(tmp_path)
    db = tmp_path / "w.duckdb"
    con = connect(db)
    first = run_pipeline(con, world, as_of=T0.replace(year=2026, month=6, day=1))["labels"]
    expected = labels(con)
    # turn it back into what schema 1 left: its tables, its version
    as_schema_4(con)
    for statement in ("DROP VIEW outcome_labels", "DROP VIEW message_labels", "DROP TABLE packed_labels",
                      "DROP TABLE message_state",
                      "CREATE TABLE message_state (message_key BIGINT NOT NULL, events BIGINT NOT NULL)",
                      "CREATE TABLE message_labels (message_key BIGINT NOT NULL, stage VARCHAR)",
                      "UPDATE schema_info SET value = '1' WHERE key = 'schema_version'"):
        con.execute(statement)
    con.close()
    con = connect(db)
    version = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    second = run_pipeline(con, world, as_of=T0.replace(year=2026, month=6, day=1))["labels"]
    assert second.full_relabel
    assert second.folded_events == first.folded_events > 0
    assert labels(con) == expected
    third = run_pipeline(con, world, as_of=T0.replace(year=2026, month=6, day=1))["labels"]
    assert not third.full_relabel  # the rebuild was asked for once


def _as_schema_2(con) -> None:
    """Turn a warehouse back into what schema 2 left: message ids global (the key of messages
    and message_keys), no organization on events, CRM events and replies."""
    as_schema_4(con)
    for statement in (
            "DROP VIEW outcome_labels", "DROP TABLE message_refolds",
            "CREATE TABLE _m AS SELECT * FROM messages", "DROP TABLE messages",
            "CREATE TABLE messages AS SELECT * FROM _m LIMIT 0", "ALTER TABLE messages ADD PRIMARY KEY (message_id)",
            "INSERT INTO messages SELECT * FROM _m", "DROP TABLE _m",
            "CREATE TABLE _k AS SELECT message_id, message_key FROM message_keys", "DROP TABLE message_keys",
            "CREATE TABLE message_keys (message_id VARCHAR PRIMARY KEY, message_key BIGINT NOT NULL)",
            "INSERT INTO message_keys SELECT * FROM _k", "DROP TABLE _k",
            "ALTER TABLE email_events DROP COLUMN organization_id", "ALTER TABLE crm_events DROP COLUMN organization_id",
            "ALTER TABLE replies DROP COLUMN organization_id",
            # schema 2 kept the reply classifier as "name:version" and had no reviewed labels
            "UPDATE reply_intents SET classifier = classifier || ':' || classifier_version",
            "ALTER TABLE reply_intents DROP COLUMN classifier_version", "DROP TABLE reply_labels",
            "UPDATE schema_info SET value = '2' WHERE key = 'schema_version'"):
        con.execute(statement)


def test_a_schema_2_warehouse_is_migrated_keeping_its_keys_and_labels(tmp_path):
    """Schema 2 identified a message by message_id alone (and kept the reply classifier as
    "name:version"; schema 3 split it out, schema 4 keys messages by organization): opening it rebuilds messages and
    message_keys with the organization in the key (the same integer keys), keeps labels and
    state (no relabel), and from then on another organization's message with the same id is a
    message of its own."""
    world = _world(tmp_path)
    db = tmp_path / "w.duckdb"
    con = connect(db)
    as_of = T0.replace(year=2026, month=6, day=1)
    run_pipeline(con, world, as_of=as_of)
    # an event whose message has not landed: its key waits for its organization
    write_jsonl(world, "sendgrid", [sg("late-1", "delivered", T0.replace(year=2026, month=5, day=30),
                                       sg_event_id="late-ev")], name="late.jsonl")
    run_pipeline(con, world, as_of=as_of)
    expected, keys = labels(con), con.execute("SELECT message_id, message_key FROM messages ORDER BY 1").fetchall()
    _as_schema_2(con)
    con.close()
    con = connect(db)
    assert con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    # schema 3's step: the reply classifier's version in its own column again
    assert con.execute("SELECT count(*) FROM reply_intents WHERE classifier_version IS NULL "
                       "OR contains(classifier, ':')").fetchone()[0] == 0
    assert con.execute("SELECT message_id, message_key FROM messages ORDER BY 1").fetchall() == keys
    assert con.execute("SELECT organization_id FROM message_keys WHERE message_id = 'late-1'").fetchall() == [("",)]
    assert labels(con) == expected
    again = run_pipeline(con, world, as_of=as_of)["labels"]
    assert not again.full_relabel and again.touched_messages == 0
    # the late message arrives and takes the key its event was waiting on; another organization
    # posting an existing id gets a message of its own
    taken = keys[0][0]
    org = con.execute("SELECT organization_id FROM messages WHERE message_id = ?", [taken]).fetchone()[0]
    write_jsonl(world, "messages", [message("late-1", org="org-late", sent=T0.replace(year=2026, month=5, day=30)),
                                    message(taken, org="org-other", sent=T0.replace(year=2026, month=5, day=30))],
                name="after.jsonl")
    run_pipeline(con, world, as_of=as_of)
    assert label(con, "late-1")["delivered"]
    assert con.execute("SELECT organization_id FROM message_keys WHERE message_id = 'late-1'").fetchall() == [
        ("org-late",)]
    assert sorted(con.execute("SELECT organization_id FROM messages WHERE message_id = ?", [taken]).fetchall()) == \
        sorted([(org,), ("org-other",)])
    assert con.execute("SELECT stage FROM outcome_labels WHERE message_id = ? AND organization_id = ?",
                       [taken, org]).fetchone() == [r for r in expected if r[0] == taken][0][14:15]
