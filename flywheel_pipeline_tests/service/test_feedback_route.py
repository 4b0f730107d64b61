"""POST /feedback over real HTTP on 127.0.0.1: a valid rating lands (with the key's organization, a
derived feedback_id and rated_at) and ingestion attaches it to its message; every bad input is a
4xx with its reason counted in /metrics; the route is switchable and needs a key when keys are
configured."""

from __future__ import annotations

from datetime import timedelta

import httpx

from flywheel_pipeline.core.inbound_records import feedback_id
from flywheel_pipeline.core.timestamps import parse_iso
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.service.settings import ROUTES
from flywheel_pipeline.warehouse.ingest import ingest_source
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, iso, message
from flywheel_pipeline_tests.fakes.http import serve_app
from flywheel_pipeline_tests.service.test_service import KEYS, landed, metric, settings_for

ONE = {"Authorization": "Bearer key-one"}


def rating(mid: str = "m-1", value=4, **extra) -> dict:
    return {"message_id": mid, "rating": value, "rater": "ada@org-1.example", "comment": "Clear ask.",
            "rated_at": iso(T0 + timedelta(hours=2)), **extra}


def test_a_valid_rating_lands_with_the_keys_organization_and_is_ingested(tmp_path):
    home = tmp_path / "fw"
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, \
            httpx.Client(base_url=base, headers=ONE) as http:
        assert http.post("/messages", json=message("m-1")).status_code == 200
        r = http.post("/feedback", json=rating())
        assert r.status_code == 200, r.text
        derived = feedback_id("org-1", "m-1", "ada@org-1.example", T0 + timedelta(hours=2))
        assert r.json() == {"accepted": 1, "feedback_ids": [derived]}
        # an array; an integer message id is its text; no rated_at: the time of receipt; an own id kept
        r = http.post("/feedback", json=[{"message_id": 7, "rating": 1}, rating(value=5, feedback_id="own-1"),
                                         rating(organization_id="org-1")])
        assert r.status_code == 200 and r.json()["accepted"] == 3
        assert metric(http.get("/metrics").text, "flywheel_events_accepted_total", source="feedback") == 4
    records = landed(home, "feedback")
    assert [(r["organization_id"], r["message_id"], r["rating"]) for r in records] == [
        ("org-1", "m-1", 4), ("org-1", "7", 1), ("org-1", "m-1", 5), ("org-1", "m-1", 4)]
    assert records[0]["feedback_id"] == derived and records[2]["feedback_id"] == "own-1"
    assert parse_iso(records[1]["rated_at"], "rated_at") > T0  # the time of receipt
    con = connect(tmp_path / "wh.duckdb")
    ingest_source(con, home / "landing", "messages")
    result = ingest_source(con, home / "landing", "feedback")
    # the same rating posted twice (same id, same content) is a silent duplicate
    assert (result.accepted, result.duplicates, result.quarantined) == (3, 1, 0)
    assert con.execute("SELECT f.rating, f.comment FROM feedback f JOIN messages m USING (message_key) "
                       "WHERE f.feedback_id = ?", [derived]).fetchall() == [(4, "Clear ask.")]
    con.close()


def test_a_retried_rating_without_its_time_is_a_duplicate_and_an_empty_rater_is_none(tmp_path):
    """No rated_at: the id comes from the content, not the time of receipt, so the client's retry of
    the same post lands twice and is ingested once; a different rating by the same rater is new."""
    home = tmp_path / "fw"
    bare = {"message_id": "m-1", "rating": 4, "rater": "ada@org-1.example", "comment": "Clear ask."}
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, \
            httpx.Client(base_url=base, headers=ONE) as http:
        assert http.post("/messages", json=message("m-1")).status_code == 200
        first = http.post("/feedback", json=bare)
        retry = http.post("/feedback", json=bare)
        other = http.post("/feedback", json={**bare, "rating": 2})
        no_rater = http.post("/feedback", json={"message_id": "m-1", "rating": 5, "rater": ""})
        assert {first.status_code, retry.status_code, other.status_code, no_rater.status_code} == {200}, no_rater.text
    assert first.json()["feedback_ids"] == retry.json()["feedback_ids"] != other.json()["feedback_ids"]
    assert landed(home, "feedback")[-1]["rater"] is None
    con = connect(tmp_path / "wh.duckdb")
    ingest_source(con, home / "landing", "messages")
    result = ingest_source(con, home / "landing", "feedback")
    assert (result.accepted, result.duplicates, result.quarantined) == (3, 1, 0)
    assert con.execute("SELECT list(rating ORDER BY rating) FILTER (rater IS NULL), count(*) FROM feedback"
                       ).fetchone() == ([5], 3)
    con.close()


def test_every_bad_rating_and_record_is_refused_with_its_reason_counted(tmp_path):
    home = tmp_path / "fw"
    cases = {  # name: (body, headers, status, reason)
        "rating 0": (rating(value=0), ONE, 422, "invalid_rating"),
        "rating 6": (rating(value=6), ONE, 422, "invalid_rating"),
        "rating 4.5": (rating(value=4.5), ONE, 422, "invalid_rating"),
        "rating 5.0": (rating(value=5.0), ONE, 422, "invalid_rating"),
        "rating '5'": (rating(value="5"), ONE, 422, "invalid_rating"),
        "rating true": (rating(value=True), ONE, 422, "invalid_rating"),
        "rating null": (rating(value=None), ONE, 422, "invalid_rating"),
        "no rating": ({"message_id": "m-1"}, ONE, 422, "invalid_rating"),
        "second record bad": ([rating(), rating(value=-1)], ONE, 422, "invalid_rating"),
        "missing message_id": ({"rating": 3}, ONE, 422, "invalid_record"),
        "empty message_id": (rating(mid=" "), ONE, 422, "invalid_record"),
        "message_id an object": (rating(mid={"id": 1}), ONE, 422, "invalid_record"),
        "unknown field": (rating(stars=5), ONE, 422, "invalid_record"),
        "comment too long": (rating(comment="x" * 2001), ONE, 422, "invalid_record"),
        "comment not text": (rating(comment=5), ONE, 422, "invalid_record"),
        "bad rated_at": (rating(rated_at="yesterday"), ONE, 422, "invalid_record"),
        "future rated_at": (rating(rated_at="2999-01-01T00:00:00Z"), ONE, 422, "invalid_record"),
        "not an object": ([3], ONE, 422, "invalid_record"),
        "empty array": ([], ONE, 400, "wrong_shape"),
        "wrong organization": (rating(organization_id="org-2"), ONE, 403, "unknown_organization"),
        "no key": (rating(), {}, 401, "unauthorized"),
        "unknown key": (rating(), {"X-API-Key": "nope"}, 401, "unauthorized"),
    }
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, \
            httpx.Client(base_url=base) as http:
        for name, (body, headers, status, reason) in cases.items():
            r = http.post("/feedback", json=body, headers=headers)
            assert (r.status_code, r.json()["error"]) == (status, reason), (name, r.text)
            assert r.json()["detail"], name
        r = http.post("/feedback", content=b'{"message_id": "m-1", "rating": NaN}', headers=ONE)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_number")
        text = http.get("/metrics").text
    counted = {}
    for _, _, _, reason in cases.values():
        counted[reason] = counted.get(reason, 0) + 1
    for reason, n in counted.items():
        assert metric(text, "flywheel_requests_rejected_total", route="/feedback", reason=reason) == n, reason
    assert landed(home, "feedback") == []  # a refused request lands nothing, not even its good records


def test_the_route_is_switchable_and_open_without_keys_only_on_loopback(tmp_path):
    assert "feedback" in ROUTES
    no_keys = settings_for(tmp_path)
    assert "feedback" in no_keys.unverified_sources()
    assert "feedback" not in settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS).unverified_sources()
    off = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DISABLED_ROUTES="feedback")
    assert "feedback" not in off.unverified_sources()
    with serve_app(create_app(off)) as base:
        r = httpx.post(f"{base}/feedback", json=rating(), headers=ONE)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
    home = tmp_path / "open"
    with serve_app(create_app(settings_for(home))) as base:  # no keys (loopback development)
        r = httpx.post(f"{base}/feedback", json=rating(organization_id="org-9"))
        assert r.status_code == 200
    assert [r["organization_id"] for r in landed(home, "feedback")] == ["org-9"]
