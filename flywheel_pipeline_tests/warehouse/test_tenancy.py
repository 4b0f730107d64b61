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
import pytest

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline.warehouse.schema import SCHEMA_VERSION, connect, open_configured
from flywheel_pipeline_tests.conftest import T0, crm, iso, message, reply, run_pipeline, sg
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


# ---- reply, CRM and SendGrid event ids are per organization ---------------------------------

VICTIM, ATTACKER = B, A  # "org-a" sorts first: the attacker's records would win a duplicate rule on content
LATER = T0 + timedelta(hours=2)

# For each source: (table, id column, the victim's record, the attacker's record with the same id,
# whose canonical JSON sorts first, and what each does to its organization's label).
_SHADOWED = {
    "sendgrid": ("email_events", "sg_event_id",
                 sg("m-1", "click", LATER, sg_event_id="ev-1", organization_id=VICTIM, url="https://x.example/a"),
                 sg("m-1", "bounce", LATER, sg_event_id="ev-1", organization_id=ATTACKER),
                 "clicked", "bounced"),
    "crm": ("crm_events", "event_id",
            crm("c-1", "meeting_booked", LATER, message_id="m-1", organization_id=VICTIM),
            crm("c-1", "deal_closed", LATER, message_id="m-1", organization_id=ATTACKER, deal_value=50_000),
            "meeting_booked", "deal_closed"),
    "replies": ("replies", "reply_id",
                reply("r-1", "m-1", LATER, "Yes, let's talk next week!", organization_id=VICTIM),
                reply("r-1", "m-1", LATER, "I am out of the office.", {"Auto-Submitted": "auto-replied"},
                      subject="A", organization_id=ATTACKER),
                "positive_reply", "auto_replies"),
}


def _land_shadowing(landing, source: str, batches: list[list[str]], con, *, full: bool = False) -> None:
    """Both organizations' messages m-1, then the attacker's and the victim's record with one id,
    landed in the batches given (each a list of "attacker" / "victim")."""
    _, _, victims, attackers, _, _ = _SHADOWED[source]
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM, lead="lead-v"),
                                      message("m-1", org=ATTACKER, lead="lead-a")], name="m.jsonl")
    for n, batch in enumerate(batches):
        for who in batch:
            write_jsonl(landing, source, [victims if who == "victim" else attackers], name=f"{n}-{who}.jsonl")
        run_pipeline(con, landing, full=full)


def _assert_both_loaded(con, source: str) -> None:
    table, id_column, victims, _, victim_flag, attacker_flag = _SHADOWED[source]
    keys = dict(con.execute("SELECT organization_id, message_key FROM messages").fetchall())
    rows = dict(con.execute(f"SELECT organization_id, message_key FROM {table} WHERE {id_column} = ?",
                            [victims[id_column]]).fetchall())
    # each organization's record is loaded and attached to its own organization's message
    assert rows == {VICTIM: keys[VICTIM], ATTACKER: keys[ATTACKER]}
    assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    victim, attacker = org_label(con, VICTIM, "m-1"), org_label(con, ATTACKER, "m-1")
    assert victim[victim_flag] and attacker[attacker_flag]
    assert not victim[attacker_flag] and not attacker[victim_flag]


@pytest.mark.parametrize("source", list(_SHADOWED))
def test_an_id_another_organization_landed_first_does_not_shadow_the_record(con, landing, source):
    """Organization B (the attacker) lands A's reply, CRM or SendGrid event id first, with content
    that would win the duplicate rule; A's record still loads, attached to A's message, and each
    organization's label reflects its own record only."""
    _land_shadowing(landing, source, [["attacker"], ["victim"]], con)
    _assert_both_loaded(con, source)


@pytest.mark.parametrize("source", list(_SHADOWED))
def test_an_id_another_organization_lands_in_the_same_batch_does_not_shadow_the_record(con, landing, source):
    _land_shadowing(landing, source, [["attacker", "victim"]], con)
    _assert_both_loaded(con, source)


@pytest.mark.parametrize("source", list(_SHADOWED))
def test_an_id_shared_by_two_organizations_survives_a_full_refresh_and_a_full_reingest(tmp_path, source):
    """Landed one after the other, then relabelled in full (`flywheel refresh --full`); and every
    file ingested again from scratch into a new warehouse, victim first, then relabelled in full:
    the same two records, the same labels (message keys are surrogates: a new warehouse may number
    its messages in another order)."""
    landing = tmp_path / "landing"
    con = connect(tmp_path / "w.duckdb")
    _land_shadowing(landing, source, [["attacker"], ["victim"]], con)
    incremental = con.execute("SELECT * EXCLUDE (label_run_id, message_key) FROM outcome_labels ORDER BY ALL").fetchall()
    run_pipeline(con, landing, full=True)
    _assert_both_loaded(con, source)
    assert con.execute("SELECT * EXCLUDE (label_run_id, message_key) FROM outcome_labels ORDER BY ALL").fetchall() == incremental
    con.close()
    again = connect(tmp_path / "again.duckdb")
    run_pipeline(again, landing, full=True)
    _assert_both_loaded(again, source)
    assert again.execute("SELECT * EXCLUDE (label_run_id, message_key) FROM outcome_labels ORDER BY ALL").fetchall() == incremental
    again.close()


@pytest.mark.parametrize("source", list(_SHADOWED))
def test_one_organization_landing_one_id_twice_is_still_a_conflicting_duplicate(con, landing, source):
    """Within one organization an id is still one record: a copy with other content conflicts,
    the record whose canonical JSON sorts first wins and the other is quarantined naming it."""
    table, id_column, victims, attackers, _, _ = _SHADOWED[source]
    other = {**attackers, "organization_id": VICTIM}  # the attacker's content, the victim's organization
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM, lead="lead-v")], name="m.jsonl")
    write_jsonl(landing, source, [victims], name="1.jsonl")
    run_pipeline(con, landing)
    write_jsonl(landing, source, [other], name="2.jsonl")
    run_pipeline(con, landing)
    assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 1
    winner, loser = "2.jsonl", "1.jsonl"  # the loaded row is replaced by the one that sorts first
    assert con.execute(f"SELECT source_file FROM {table}").fetchone()[0] == winner
    assert con.execute("SELECT source_file, reason FROM quarantine").fetchall() == [
        (loser, f"conflicting_duplicate: {id_column} {victims[id_column]}, kept the record of {winner}:1")]
    # a loaded row that lost is counted as quarantined in its file's counts
    assert con.execute("SELECT file_name, valid_lines, quarantined FROM landing_files WHERE source = ? "
                       "ORDER BY 1", [source]).fetchall() == sorted([(winner, 1, 0), (loser, 0, 1)])


def test_records_that_name_no_organization_share_one_space_of_ids(con, landing):
    """Older senders and CRM webhooks name no organization: their ids are keyed by themselves
    (key_org ''), so two such records with one id are one record (a copy or a conflicting
    duplicate, as before), each still attaching through its message's organization; a record
    that names an organization never meets them."""
    write_jsonl(landing, "messages", [message("m-1", org=A, lead="lead-1")], name="m.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "delivered", T0 + timedelta(seconds=5), sg_event_id="ev-1"),
                                      sg("m-1", "open", LATER, sg_event_id="ev-2")], name="old-1.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "delivered", T0 + timedelta(seconds=5), sg_event_id="ev-1"),
                                      sg("m-1", "open", LATER, sg_event_id="ev-2", sg_machine_open=True),
                                      sg("m-1", "click", LATER, sg_event_id="ev-2", organization_id=A,
                                         url="https://x.example/a")], name="old-2.jsonl")
    run_pipeline(con, landing)
    rows = con.execute("SELECT key_org, sg_event_id, organization_id, event::VARCHAR, message_key FROM email_events "
                       "ORDER BY 1, 2").fetchall()
    key = con.execute("SELECT message_key FROM messages").fetchone()[0]
    assert rows == [("", "ev-1", None, "delivered", key), ("", "ev-2", None, "open", key),
                    (A, "ev-2", A, "click", key)]
    assert con.execute("SELECT source_file, reason FROM quarantine").fetchall() == [
        ("old-2.jsonl", "conflicting_duplicate: sg_event_id ev-2, kept the record of old-1.jsonl:2")]
    assert org_label(con, A, "m-1")["clicked"]


def test_reviewed_labels_name_the_reply_of_one_organization(home, monkeypatch, capsys):
    """Two organizations' replies with one id: each is classified on its own; `flywheel replies
    review` lists both with their organization, and a correction lands for that organization's
    reply only; a hand-written label that names no organization is quarantined as ambiguous."""
    from flywheel_pipeline import paths
    from flywheel_pipeline.cli import main
    from flywheel_pipeline.warehouse.ingest import ingest_source

    monkeypatch.delenv("FLYWHEEL_LANDING", raising=False)
    landing = paths.landing_dir()
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM, lead="lead-v"),
                                      message("m-1", org=ATTACKER, lead="lead-a")], name="m.jsonl")
    write_jsonl(landing, "replies", [reply("r-1", "m-1", LATER, "hmm, maybe", organization_id=VICTIM),
                                     reply("r-1", "m-1", LATER, "hmm, perhaps", organization_id=ATTACKER)],
                name="r.jsonl")
    con = open_configured(read_only=False)
    run_pipeline(con, landing)
    assert sorted(con.execute("SELECT key_org, reply_id FROM reply_intents").fetchall()) == [
        (A, "r-1"), (B, "r-1")]
    con.close()
    review = home / "review.jsonl"
    assert main(["replies", "review", "--below", "1.01", "--out", str(review)]) == 0
    listed = [json.loads(line) for line in review.read_text(encoding="utf-8").splitlines()]
    assert sorted((row["organization_id"], row["id"]) for row in listed) == [(A, "r-1"), (B, "r-1")]
    victims = [{**row, "intent": "interested", "sentiment": "positive"} for row in listed
               if row["organization_id"] == VICTIM]
    review.write_text("".join(json.dumps(row) + "\n" for row in victims), encoding="utf-8")
    assert main(["replies", "correct", str(review)]) == 0
    write_jsonl(landing, "reply_labels", [{"label_id": "by-hand", "reply_id": "r-1", "intent": "hostile",
                                           "sentiment": "negative", "labelled_at": iso(LATER)}], name="hand.jsonl")
    con = open_configured(read_only=False)
    assert ingest_source(con, landing, "reply_labels").accepted == 1
    run_pipeline(con, landing)
    intents = dict(con.execute("SELECT key_org, intent || '/' || classifier FROM reply_intents").fetchall())
    assert intents[VICTIM] == "interested/human" and not intents[ATTACKER].endswith("/human")
    assert con.execute("SELECT key_org, organization_id FROM reply_labels").fetchall() == [(VICTIM, VICTIM)]
    assert con.execute("SELECT source_file, reason FROM quarantine").fetchall() == [
        ("hand.jsonl", "unattributable: the reply_id is used by several organizations and the label names none")]
    assert org_label(con, VICTIM, "m-1")["positive_reply"] and not org_label(con, ATTACKER, "m-1")["positive_reply"]
    con.close()


def _schema_4_columns(con) -> dict[str, list[str]]:
    """The columns schema 4 had, of the tables schema 5 rebuilt and of those it kept."""
    tables = ("email_events", "crm_events", "replies", "reply_intents", "reply_labels", "messages",
              "message_keys", "message_state", "packed_labels", "landing_files", "quarantine")
    return {t: [c for (c,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND column_name <> 'key_org' "
        "AND NOT (table_name = 'reply_labels' AND column_name = 'organization_id') ORDER BY column_index",
        [t]).fetchall()] for t in tables}


def test_a_schema_4_warehouse_is_migrated_keeping_every_row(tmp_path):
    """Schema 4 keyed email events, CRM events, replies, reply intents and reviewed labels by
    their id alone: opening such a warehouse rebuilds them keyed by (key_org, id) with every row
    (key_org the organization each names, '' for none; an intent's and a label's that of their
    reply), keeps labels and state (no relabel, no reclassification), and from then on another
    organization may use the same ids."""
    from flywheel_pipeline.warehouse.ingest import ingest_source
    from flywheel_pipeline_tests.conftest import as_schema_4

    landing, db = tmp_path / "landing", tmp_path / "w.duckdb"
    con = connect(db)
    write_jsonl(landing, "messages", [message("m-1", org=VICTIM, lead="lead-v"),
                                      message("m-2", org=VICTIM, lead="lead-w")], name="m.jsonl")
    write_jsonl(landing, "sendgrid", [sg("m-1", "delivered", T0 + timedelta(seconds=5), sg_event_id="ev-1",
                                         organization_id=VICTIM),
                                      sg("m-2", "open", LATER, sg_event_id="ev-2")], name="s.jsonl")
    write_jsonl(landing, "crm", [crm("c-1", "meeting_booked", LATER, message_id="m-1", organization_id=VICTIM),
                                 crm("c-2", "deal_lost", LATER, lead_id="lead-w")], name="c.jsonl")
    write_jsonl(landing, "replies", [reply("r-1", "m-1", LATER, "hmm, maybe", organization_id=VICTIM),
                                     reply("r-2", "m-2", LATER, "Yes, let's talk next week!")], name="r.jsonl")
    run_pipeline(con, landing)
    write_jsonl(landing, "reply_labels", [{"label_id": "l-1", "reply_id": "r-1", "intent": "interested",
                                           "sentiment": "positive", "labelled_at": iso(LATER)}], name="l.jsonl")
    assert ingest_source(con, landing, "reply_labels").accepted == 1
    run_pipeline(con, landing)

    def schema_4_rows(con) -> dict:  # every table's rows in schema 4's columns
        return {t: con.execute(f"SELECT {', '.join(columns)} FROM {t} ORDER BY ALL").fetchall()
                for t, columns in _schema_4_columns(con).items()}

    before = schema_4_rows(con)
    as_schema_4(con)
    con.close()
    con = connect(db)
    assert con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    assert schema_4_rows(con) == before
    keys = {t: con.execute(f"SELECT key_org, {c} FROM {t} ORDER BY ALL").fetchall() for t, c in (
        ("email_events", "sg_event_id"), ("crm_events", "event_id"), ("replies", "reply_id"),
        ("reply_intents", "reply_id"), ("reply_labels", "reply_id"))}
    assert keys == {"email_events": [("", "ev-2"), (VICTIM, "ev-1")], "crm_events": [("", "c-2"), (VICTIM, "c-1")],
                    "replies": [("", "r-2"), (VICTIM, "r-1")], "reply_intents": [("", "r-2"), (VICTIM, "r-1")],
                    "reply_labels": [(VICTIM, "r-1")]}
    again = run_pipeline(con, landing)
    assert again["labels"].touched_messages == 0 and not again["labels"].full_relabel
    assert con.execute("SELECT intent, classifier FROM reply_intents WHERE reply_id = 'r-1'").fetchone() == (
        "interested", "human")
    # the ids are per organization from now on
    write_jsonl(landing, "messages", [message("m-1", org=ATTACKER, lead="lead-a")], name="m-a.jsonl")
    write_jsonl(landing, "replies", [reply("r-1", "m-1", LATER, "Not interested, thanks.", organization_id=ATTACKER)],
                name="r-a.jsonl")
    run_pipeline(con, landing)
    assert sorted(con.execute("SELECT key_org, intent FROM reply_intents WHERE reply_id = 'r-1'").fetchall()) == [
        (ATTACKER, "not_interested"), (VICTIM, "interested")]
    assert org_label(con, VICTIM, "m-1")["positive_reply"] and not org_label(con, ATTACKER, "m-1")["positive_reply"]
    con.close()


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
        # a file's counts include its loaded lines that a later batch replaced (and quarantined)
        "files": con.execute("SELECT source, file_name, lines, valid_lines, quarantined FROM landing_files "
                             "ORDER BY 1, 2").fetchall(),
    }
    per_file = dict(((source, name), n) for source, name, n in con.execute(
        "SELECT source, source_file, count(*) FROM quarantine GROUP BY ALL").fetchall())
    assert [(s, f, q) for s, f, _, _, q in state["files"] if q] == [(s, f, n) for (s, f), n in sorted(per_file.items())]
    assert con.execute("SELECT sum(quarantined) FROM ingest_batches").fetchone()[0] == len(state["quarantine"])
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
