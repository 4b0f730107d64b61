"""Ingestion of landing/feedback (people's 1-5 ratings) on real DuckDB files: strict validation with
a quarantine reason per bad line, duplicates by (organization, feedback_id), attachment to the
message of the rating's organization only, labels untouched, and the schema-7 migration of a
schema-6 warehouse in place."""

from __future__ import annotations

from datetime import timedelta

import duckdb

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.warehouse import schema
from flywheel_pipeline.warehouse.ingest import AMBIGUOUS, CONFLICT, ingest_source
from flywheel_pipeline.warehouse.ingest_summary import source_summary
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, iso, message, run_pipeline, sg

VICTIM, OTHER = "org-a", "org-b"


def fb(fid: str, mid: str = "m-1", rating=4, org: str | None = VICTIM, **extra) -> dict:
    record = {"feedback_id": fid, "message_id": mid, "rating": rating, "rater": "ada",
              "rated_at": iso(T0 + timedelta(hours=1)), **extra}
    if org is not None:
        record["organization_id"] = org
    return record


def test_bad_lines_are_quarantined_with_their_reason_and_the_rest_loads(con, landing):
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM)])
    ingest_source(con, landing, "messages")
    lines = [fb("ok-1"), fb("ok-2", rating=1, comment="meh"),
             fb("r0", rating=0), fb("r6", rating=6), fb("r45", rating=4.5), fb("r50", rating=5.0),
             fb("rstr", rating="5"), fb("rtrue", rating=True), fb("rbig", rating=2**70), fb("rnone", rating=None),
             {k: v for k, v in fb("nomid").items() if k != "message_id"}, {"message_id": "m-1", "rating": 3,
                                                                            "rated_at": iso(T0)},
             fb("extra", stars=5), fb("cobj", comment={"a": 1}), fb("clong", comment="x" * 2001),
             fb("ts", rated_at="yesterday"), fb("old", rated_at="1999-12-31T00:00:00Z"),
             {k: v for k, v in fb("nots").items() if k != "rated_at"}, "[1, 2]", '{"feedback_id": "torn", "rat']
    path = write_jsonl(landing, "feedback", lines)
    result = ingest_source(con, landing, "feedback")
    assert (result.lines, result.accepted, result.quarantined) == (len(lines), 2, len(lines) - 2)
    reasons = dict(con.execute("SELECT line_no, reason FROM quarantine WHERE source = 'feedback'").fetchall())
    invalid = "invalid rating: not an integer from 1 to 5"
    assert reasons == {
        3: invalid, 4: invalid, 5: invalid, 6: invalid, 7: invalid, 8: invalid, 9: invalid, 10: "missing rating",
        11: "missing message_id", 12: "missing feedback_id", 13: "unknown field(s): stars",
        14: "invalid comment: not text", 15: "invalid comment: longer than 2000 characters",
        16: "invalid rated_at: not an ISO 8601 timestamp",
        17: "invalid rated_at: before 2000-01-01 or more than a day after ingestion", 18: "missing rated_at",
        19: "not a JSON object", 20: "malformed JSON"}
    assert result.quarantine_reasons["unknown field(s)"] == 1
    assert con.execute("SELECT lines, valid_lines, quarantined FROM landing_files WHERE source = 'feedback' "
                       "AND file_name = ?", [path.name]).fetchone() == (len(lines), 2, len(lines) - 2)
    assert con.execute("SELECT feedback_id, rating, comment, organization_id, key_org FROM feedback "
                       "ORDER BY 1").fetchall() == [("ok-1", 4, None, VICTIM, VICTIM),
                                                    ("ok-2", 1, "meh", VICTIM, VICTIM)]
    # attached to the message: its key is the message's
    assert con.execute("SELECT count(*) FROM feedback f JOIN messages m USING (message_key)").fetchone()[0] == 2
    summary = source_summary(con, "feedback")
    assert summary.rows == 2 and summary.breakdown == [(1, 1, 0.5), (2, 0, 0.0), (3, 0, 0.0), (4, 1, 0.5),
                                                       (5, 0, 0.0)]
    assert ingest_source(con, landing, "feedback").files == 0  # exactly once


def test_duplicates_are_skipped_and_conflicts_settled_the_same_way_in_any_order(tmp_path):
    # two ratings with one id and other content: the one whose canonical JSON sorts first (rating 2) wins
    winner, loser = fb("f-1", rating=2), fb("f-1", rating=5)
    outcomes = []
    for order in ((winner, loser), (loser, winner)):
        landing = tmp_path / f"landing-{len(outcomes)}"
        con = connect(tmp_path / f"wh-{len(outcomes)}.duckdb")
        write_jsonl(landing, "feedback", [order[0], dict(order[0])], name="a.jsonl")  # a copy: silent
        first = ingest_source(con, landing, "feedback")
        assert (first.accepted, first.duplicates, first.quarantined) == (1, 1, 0)
        write_jsonl(landing, "feedback", [order[1]], name="b.jsonl")  # another rating with one id: a conflict
        ingest_source(con, landing, "feedback")
        outcomes.append((con.execute("SELECT rating FROM feedback").fetchall(),
                         con.execute("SELECT reason FROM quarantine").fetchall()))
        # a replaced rating queues no relabelling: labels do not read ratings
        assert con.execute("SELECT count(*) FROM message_refolds").fetchone() == (0,)
        con.close()
    assert outcomes[0][0] == outcomes[1][0] == [(2,)]
    for _, quarantined in outcomes:
        assert len(quarantined) == 1 and quarantined[0][0].startswith(f"{CONFLICT}: feedback_id f-1, kept the record")


def test_an_organization_cannot_rate_another_organizations_message(con, landing):
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM), message("m-2", org=VICTIM),
                                      message("m-2", org=OTHER), message("m-3", org=VICTIM)])
    ingest_source(con, landing, "messages")
    # org-b rates org-a's m-1 (which it has not sent) and reuses org-a's feedback id: its own records
    write_jsonl(landing, "feedback", [fb("f-1", rating=5), fb("f-1", rating=1, org=OTHER),
                                      fb("f-2", mid="m-2", rating=3, org=OTHER)])
    result = ingest_source(con, landing, "feedback")
    assert (result.accepted, result.quarantined) == (3, 0)
    rows = con.execute("""SELECT f.key_org, f.feedback_id, f.rating, m.organization_id
                          FROM feedback f LEFT JOIN messages m USING (message_key) ORDER BY 1, 2""").fetchall()
    # org-b's rating of m-1 attaches to no message of org-a (there is none of its own yet)
    assert rows == [(VICTIM, "f-1", 5, VICTIM), (OTHER, "f-1", 1, None), (OTHER, "f-2", 3, OTHER)]
    victim_m1 = con.execute("SELECT message_key FROM messages WHERE organization_id = ? AND message_id = 'm-1'",
                            [VICTIM]).fetchone()[0]
    assert con.execute("SELECT key_org, rating FROM feedback WHERE message_key = ?", [victim_m1]).fetchall() == [
        (VICTIM, 5)]
    # a rating naming no organization attaches to the only organization with its message id, and is
    # quarantined when several have it (m-1 too, now that org-b's rating named it)
    write_jsonl(landing, "feedback", [fb("f-3", mid="m-3", org=None), fb("f-4", mid="m-2", org=None)])
    result = ingest_source(con, landing, "feedback")
    assert (result.accepted, result.quarantined) == (1, 1)
    assert con.execute("SELECT m.organization_id FROM feedback f JOIN messages m USING (message_key) "
                       "WHERE f.feedback_id = 'f-3'").fetchone() == (VICTIM,)
    assert con.execute("SELECT reason FROM quarantine").fetchall() == [(AMBIGUOUS,)]


def test_ratings_sit_beside_the_labels_and_do_not_change_them(tmp_path):
    results = []
    for with_feedback in (False, True):
        landing = tmp_path / f"landing-{with_feedback}"
        write_jsonl(landing, "messages", [message("m-1", org=VICTIM), message("m-2", org=VICTIM, lead="lead-2")])
        write_jsonl(landing, "sendgrid", [sg("m-1", "delivered", T0, organization_id=VICTIM),
                                          sg("m-2", "delivered", T0, organization_id=VICTIM)])
        if with_feedback:
            write_jsonl(landing, "feedback", [fb("f-1", rating=1), fb("f-2", mid="m-2", rating=5)])
        con = connect(tmp_path / f"wh-{with_feedback}.duckdb")
        run_pipeline(con, landing)
        results.append(con.execute("SELECT * EXCLUDE (label_run_id) FROM outcome_labels ORDER BY message_id"
                                   ).fetchall())
        assert con.execute("SELECT count(*) FROM feedback").fetchone()[0] == (2 if with_feedback else 0)
        con.close()
    assert results[0] == results[1] and len(results[0]) == 2


def test_a_schema_6_warehouse_gets_the_feedback_table_in_place(tmp_path, landing):
    path = tmp_path / "wh.duckdb"
    con = connect(path)
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM)])
    ingest_source(con, landing, "messages")
    con.close()
    old = duckdb.connect(str(path))  # what schema 6 left: no feedback table
    old.execute("DROP TABLE feedback")
    old.execute("UPDATE schema_info SET value = '6' WHERE key = 'schema_version'")
    old.close()

    con = connect(path)
    assert schema.FEEDBACK_SINCE == 7 <= schema.SCHEMA_VERSION
    assert con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone() == (str(schema.SCHEMA_VERSION),)
    assert con.execute("SELECT count(*) FROM messages").fetchone() == (1,)
    write_jsonl(landing, "feedback", [fb("f-1")])
    assert ingest_source(con, landing, "feedback").accepted == 1
    assert con.execute("SELECT m.message_id FROM feedback JOIN messages m USING (message_key)").fetchall() == [
        ("m-1",)]
    con.close()


def test_the_feedback_asset_is_in_the_refresh_job_and_reports_the_ratings(tmp_path):
    import dagster as dg

    from flywheel_pipeline.defs.ingest.assets import feedback, messages
    from flywheel_pipeline.defs.ingest.automation import refresh_job
    from flywheel_pipeline.defs.resources import LandingZoneResource, WarehouseResource
    from flywheel_pipeline_tests.domains import assets_of

    landing = tmp_path / "landing"
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM)])
    write_jsonl(landing, "feedback", [fb("f-1", rating=5), fb("f-2", rating=5, rater="bo"), fb("f-3", rating=2),
                                      fb("bad", rating=9)])
    with dg.instance_for_test() as instance:
        result = dg.materialize([messages, feedback], instance=instance, resources={
            "warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
            "landing": LandingZoneResource(path=str(landing))})
        assert result.success
        [event] = [e for e in result.get_asset_materialization_events()
                   if e.asset_key.to_user_string() == "feedback"]
        meta = event.materialization.metadata
        assert meta["dagster/row_count"].value == 3
        assert (meta["rows_accepted"].value, meta["lines_quarantined"].value) == (3, 1)
        assert meta["quarantine_reasons"].value == {"invalid rating: not an integer from 1 to 5": 1}
        distribution = meta["ratings_distribution"].value
        assert "| 5 | 2 | 0.6667 |" in distribution and "| 3 | 0 | 0 |" in distribution
    # in the ingest group, as the code location loads it: the refresh job runs it
    assert dg.AssetKey("feedback") in {k for a in assets_of("ingest") if isinstance(a, dg.AssetsDefinition)
                                       for k in a.keys}
    assert refresh_job.selection == dg.AssetSelection.groups("ingest", "outcomes")
