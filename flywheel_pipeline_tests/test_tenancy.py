"""Tenant isolation and deterministic duplicates (real DuckDB files, the service over HTTP).

A message is identified by (organization_id, message_id): another organization can never
shadow, drop or modify it; replies, CRM and email events that name an organization attach to
that organization's messages only; a key reads its organization's leaderboard only. Of two
conflicting records with one key, the one whose canonical JSON sorts first wins however the
files are batched."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, crm, message, reply, run_pipeline, sg
from flywheel_pipeline_tests.fakes.http import serve_app

A, B = "org-a", "org-b"


def org_label(con, org: str, mid: str) -> dict:
    cur = con.execute("SELECT * FROM outcome_labels WHERE organization_id = ? AND message_id = ?", [org, mid])
    row = cur.fetchone()
    assert row is not None, f"no label for {org}/{mid}"
    return dict(zip([d[0] for d in cur.description], row))


def test_another_organization_cannot_shadow_a_message_id(con, landing):
    """B posts A's message id first (another lead, another text): A's real message still loads,
    under its own key, and A's events label A's message only."""
    write_jsonl(landing, "messages", [message("m-1", org=B, lead="lead-b", body="B's text")], name="1.jsonl")
    run_pipeline(con, landing)
    write_jsonl(landing, "messages", [message("m-1", org=A, lead="lead-a", body="A's text")], name="2.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "delivered", T0 + timedelta(seconds=5), organization_id=A),
                                      sg("m-1", "open", T0 + timedelta(hours=1), organization_id=A)], name="3.jsonl")
    result = run_pipeline(con, landing)
    assert result["messages"].accepted == 1 and result["messages"].duplicates == 0
    rows = con.execute("SELECT organization_id, lead_id, body, message_key FROM messages ORDER BY 1").fetchall()
    assert [r[:3] for r in rows] == [(A, "lead-a", "A's text"), (B, "lead-b", "B's text")]
    assert rows[0][3] != rows[1][3]
    assert org_label(con, A, "m-1")["opened"] and not org_label(con, B, "m-1")["delivered"]


def test_records_of_another_organization_never_attach_to_a_message(con, landing):
    """A reply, a CRM event and an email event that name organization B attach to B's messages
    only, never to A's message with the same id or the same recipient; A's own records do."""
    write_jsonl(landing, "messages", [message("m-1", org=A, lead="lead-1")], name="m.jsonl")
    later = T0 + timedelta(hours=2)
    write_jsonl(landing, "replies", [
        reply("r-by-id", "m-1", later, "Yes, let's talk next week!", organization_id=B),
        reply("r-by-email", None, later, "Sounds great, book a meeting", organization_id=B)], name="r.jsonl")
    write_jsonl(landing, "crm", [crm("c-by-id", "deal_closed", later, message_id="m-1", organization_id=B,
                                     deal_value=50_000),
                                 crm("c-by-lead", "meeting_booked", later, lead_id="lead-1", organization_id=B)],
                name="c.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "spamreport", later, organization_id=B)], name="s.jsonl")
    run_pipeline(con, landing)
    a = org_label(con, A, "m-1")
    assert not (a["replied"] or a["deal_closed"] or a["meeting_booked"] or a["spam_reported"])
    a_key = con.execute("SELECT message_key FROM messages WHERE organization_id = ?", [A]).fetchone()[0]
    assert con.execute("SELECT count(*) FROM replies WHERE message_key = ?", [a_key]).fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM crm_events WHERE message_key = ?", [a_key]).fetchone()[0] == 0
    assert con.execute("SELECT DISTINCT organization_id FROM replies").fetchall() == [(B,)]
    # the same records posted for A attach to A's message
    write_jsonl(landing, "replies", [reply("r-a", None, later, "Sounds great, book a meeting", organization_id=A)],
                name="r2.jsonl")
    write_jsonl(landing, "crm", [crm("c-a", "meeting_booked", later, lead_id="lead-1", organization_id=A)],
                name="c2.jsonl")
    run_pipeline(con, landing)
    a = org_label(con, A, "m-1")
    assert a["replied"] and a["meeting_booked"] and not a["deal_closed"]


def test_another_organization_cannot_replace_a_loaded_record_by_reusing_its_id(con, landing):
    """An organization posts a reply and an email event with the ids of another's loaded ones,
    with content that would win the duplicate rule ("org-a" sorts before "org-b" in the canonical
    JSON): the victim's records stay, the attacker's are quarantined as conflicting duplicates
    naming the victim's record, and the victim's label does not change."""
    VICTIM, ATTACKER = B, A
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM, lead="lead-1")], name="m.jsonl")
    later = T0 + timedelta(hours=2)
    write_jsonl(landing, "replies", [reply("r-1", "m-1", later, "Yes, let's talk next week!", organization_id=VICTIM)],
                name="r-a.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "click", later, sg_event_id="ev-1", organization_id=VICTIM,
                                         url="https://x.example/a")], name="s-a.jsonl")
    run_pipeline(con, landing)
    before = org_label(con, VICTIM, "m-1")
    assert before["replied"] and before["clicked"]
    write_jsonl(landing, "messages", [message("m-1", org=ATTACKER, lead="lead-9")], name="m-b.jsonl")
    write_jsonl(landing, "replies", [reply("r-1", "m-1", later, "A", organization_id=ATTACKER)], name="r-b.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "bounce", later, sg_event_id="ev-1", organization_id=ATTACKER)],
                name="s-b.jsonl")
    run_pipeline(con, landing)
    assert con.execute("SELECT organization_id, text FROM replies").fetchall() == [(VICTIM, "Yes, let's talk next week!")]
    assert con.execute("SELECT organization_id, event::VARCHAR FROM email_events").fetchall() == [(VICTIM, "click")]
    reasons = dict(con.execute("SELECT source_file, reason FROM quarantine").fetchall())
    assert reasons["r-b.jsonl"] == "conflicting_duplicate: reply_id r-1, kept the record of r-a.jsonl:1"
    assert reasons["s-b.jsonl"] == "conflicting_duplicate: sg_event_id ev-1, kept the record of s-a.jsonl:1"
    assert org_label(con, VICTIM, "m-1") == before


def test_a_key_posts_replies_for_its_organization_and_reads_its_own_leaderboard(tmp_path):
    home = tmp_path / "fw"
    settings = ServiceSettings.from_env({"FLYWHEEL_HOME": str(home), "FLYWHEEL_API_KEYS": f"{A}=key-a,{B}=key-b"})
    (home).mkdir(parents=True)
    (home / "leaderboard.json").write_text(json.dumps({
        "generated_at": "2026-03-02T00:00:00+00:00", "models": [{"model": "ft:a"}, {"model": "ft:b"}],
        "organizations": {A: [{"model": "ft:a", "messages": 400}], B: [{"model": "ft:b", "messages": 900}]}}))
    key_b = {"Authorization": "Bearer key-b"}
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        ok = http.post("/replies", json=reply("r-1", "m-1", T0, "hello"), headers=key_b)
        assert ok.status_code == 200, ok.text
        claimed = http.post("/replies", json=reply("r-2", "m-1", T0, "hello", organization_id=A), headers=key_b)
        assert claimed.status_code == 403 and claimed.json()["error"] == "unknown_organization"
        board = http.get("/leaderboard", headers=key_b).json()
        assert board["models"] == [{"model": "ft:b", "messages": 900}] and board["organization_id"] == B
        assert "organizations" not in board and "ft:a" not in json.dumps(board)
        assert http.get("/leaderboard", headers={"X-API-Key": "key-a"}).json()["models"] == [
            {"model": "ft:a", "messages": 400}]
    landed = [json.loads(line) for f in (home / "landing" / "replies").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    assert [(r["reply_id"], r["organization_id"]) for r in landed] == [("r-1", B)]


# ---- deterministic duplicates ------------------------------------------------------------

def _conflicting_files() -> dict[str, tuple[str, list[dict]]]:
    """Three files, each with a different version of message m-1 and of event e-open (a human
    open in one, a machine open in others), plus e-deliv and one reply copied identically."""
    human = sg("m-1", "open", T0 + timedelta(hours=1), sg_event_id="e-open", sg_machine_open=False, organization_id=A)
    machine = sg("m-1", "open", T0 + timedelta(hours=1), sg_event_id="e-open", sg_machine_open=True, organization_id=A)
    later = sg("m-1", "open", T0 + timedelta(hours=3), sg_event_id="e-open", sg_machine_open=True, organization_id=A)
    deliv = sg("m-1", "delivered", T0 + timedelta(seconds=3), sg_event_id="e-deliv", organization_id=A)
    return {
        "1": ("messages", [message("m-1", org=A, body="version one https://x.example/a")]),
        "2": ("messages", [message("m-1", org=A, body="version two")]),
        "3": ("sendgrid", [machine, deliv]),
        "4": ("sendgrid", [later, deliv]),
        "5": ("sendgrid", [human]),
    }


def _settled(tmp_path, name: str, batches: list[list[str]], *, full_at_end: bool = False):
    files = _conflicting_files()
    landing, con = tmp_path / f"landing-{name}", connect(tmp_path / f"{name}.duckdb")
    for batch in batches:
        for f in batch:
            source, records = files[f]
            write_jsonl(landing, source, records, name=f"{f}.jsonl")
        run_pipeline(con, landing)
    incremental = con.execute("SELECT * EXCLUDE (label_run_id) FROM outcome_labels").fetchall()
    if full_at_end:
        run_pipeline(con, landing, full=True)
        assert con.execute("SELECT * EXCLUDE (label_run_id) FROM outcome_labels").fetchall() == incremental
    state = {
        "labels": incremental,
        "message": con.execute("SELECT body, source_file FROM messages").fetchall(),
        # (an identical copy keeps the file it was first loaded from: not compared)
        "events": con.execute("SELECT sg_event_id, machine_open, occurred_at, "
                              "CASE WHEN sg_event_id = 'e-open' THEN source_file END FROM email_events "
                              "ORDER BY 1").fetchall(),
        "quarantine": con.execute("SELECT source, source_file, line_no, reason, raw_line FROM quarantine "
                                  "ORDER BY 1, 2, 3").fetchall(),
    }
    con.close()
    return state


def test_conflicting_duplicates_settle_on_one_winner_however_files_are_batched(tmp_path):
    """All files at once, the loser first and the winner in a later batch (replacing a loaded
    row, refolding its message), the reverse, and a full relabel: the same winner, the same
    labels and the same quarantined losers, each naming the record it lost to."""
    at_once = _settled(tmp_path, "once", [["1", "2", "3", "4", "5"]])
    losers_first = _settled(tmp_path, "losers", [["2"], ["4"], ["3"], ["1", "5"]], full_at_end=True)
    winners_first = _settled(tmp_path, "winners", [["1", "5"], ["3"], ["2", "4"]], full_at_end=True)
    one_by_one = _settled(tmp_path, "single", [["3"], ["5"], ["4"], ["2"], ["1"]], full_at_end=True)
    assert at_once == losers_first == winners_first == one_by_one
    # the winners: the canonical JSON that sorts first ("body":"version one..." < "version two";
    # "machine_open":false < true, then the earlier time); e-deliv's copies are identical
    assert at_once["message"] == [("version one https://x.example/a", "1.jsonl")]
    assert [e[:2] for e in at_once["events"]] == [("e-deliv", None), ("e-open", False)]
    assert at_once["events"][1][3] == "5.jsonl"
    assert at_once["labels"][0][11] is True  # opened: the human open won, also where it replaced a machine open
    quarantined = {(q[1], q[2]): q[3] for q in at_once["quarantine"]}
    assert quarantined == {
        ("2.jsonl", 1): "conflicting_duplicate: message_id m-1, kept the record of 1.jsonl:1",
        ("3.jsonl", 1): "conflicting_duplicate: sg_event_id e-open, kept the record of 5.jsonl:1",
        ("4.jsonl", 1): "conflicting_duplicate: sg_event_id e-open, kept the record of 5.jsonl:1"}
