"""The ingestion service over real HTTP on 127.0.0.1: signatures, payloads, limits, routing, metrics,
landing files that ingestion turns into labels, and kill -9 recovery of a `flywheel serve` process."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flywheel_pipeline.core.landing import list_files
from flywheel_pipeline.core.signatures import hubspot_v3_signature
from flywheel_pipeline.routing import write_routing
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.service.hubspot_client import HubSpotClient
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, iso, message, run_pipeline, sg
from flywheel_pipeline_tests.fakes.hubspot_server import FakeHubSpot
from flywheel_pipeline_tests.fakes.http import free_port, serve_app, start_flywheel_serve

HUBSPOT_SECRET = "hs-client-secret"
KEYS = "org-1=key-one,org-2=key-two"


@pytest.fixture(scope="module")
def sendgrid_keys():
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def sendgrid_headers(private, body: bytes, ts: str | None = None) -> dict[str, str]:
    ts = ts or str(int(time.time()))
    sig = base64.b64encode(private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    return {"X-Twilio-Email-Event-Webhook-Signature": sig, "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            "Content-Type": "application/json"}


def hubspot_headers(url: str, body: bytes, ts_ms: int | None = None) -> dict[str, str]:
    ts = str(ts_ms if ts_ms is not None else int(time.time() * 1000))
    return {"X-HubSpot-Signature-v3": hubspot_v3_signature(HUBSPOT_SECRET, "POST", url, body, ts),
            "X-HubSpot-Request-Timestamp": ts, "Content-Type": "application/json"}


def settings_for(home: Path, **env: str) -> ServiceSettings:
    return ServiceSettings.from_env({"FLYWHEEL_HOME": str(home), **env})


def landed(home: Path, source: str) -> list[dict]:
    return [json.loads(line) for f in list_files(home / "landing", source)
            for line in f.path.read_text().splitlines()]


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{want}}} in /metrics")


def test_sendgrid_signed_events_land_and_bad_requests_get_reasons(tmp_path, sendgrid_keys):
    private, public_b64 = sendgrid_keys
    home = tmp_path / "fw"
    app = create_app(settings_for(home, FLYWHEEL_SENDGRID_PUBLIC_KEY=public_b64, FLYWHEEL_SENDGRID_MAX_AGE_S="300"))
    events = [sg("m-1", "delivered", T0, sg_event_id="e1"), sg("m-1", "open", T0, sg_event_id="e2")]
    body = (json.dumps(events) + "\r\n").encode()  # SendGrid's bodies end in CRLF, and it is signed
    with serve_app(app) as base, httpx.Client(base_url=base) as http:
        ok = http.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(private, body))
        assert ok.status_code == 200 and ok.json() == {"accepted": 2}
        cases = {
            "tampered body": (body.replace(b"open", b"click"), sendgrid_headers(private, body), "bad_signature"),
            "CRLF stripped": (body.rstrip(), sendgrid_headers(private, body), "bad_signature"),
            "tampered timestamp": (body, {**sendgrid_headers(private, body),
                                          "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) - 1)},
                                   "bad_signature"),
            "stale": (body, sendgrid_headers(private, body, str(int(time.time()) - 3600)), "stale_timestamp"),
            "unsigned": (body, {"Content-Type": "application/json"}, "missing_signature"),
        }
        for name, (content, headers, reason) in cases.items():
            r = http.post("/webhooks/sendgrid", content=content, headers=headers)
            assert (r.status_code, r.json()["error"]) == (401, reason), name
        for content, reason in ((b'[{"event": "open"', "malformed_json"), (b'{"event": "open"}', "wrong_shape"),
                                (b'[{"event": "open"}, 3]', "wrong_shape")):
            r = http.post("/webhooks/sendgrid", content=content, headers=sendgrid_headers(private, content))
            assert (r.status_code, r.json()["error"]) == (400, reason) and r.json()["detail"]
        text = http.get("/metrics").text
        assert metric(text, "flywheel_events_accepted_total", source="sendgrid") == 2
        assert metric(text, "flywheel_requests_rejected_total", route="/webhooks/sendgrid",
                      reason="bad_signature") == 3
        assert metric(text, "flywheel_requests_rejected_total", reason="stale_timestamp") == 1
        assert metric(text, "flywheel_landing_bytes_total", source="sendgrid") > 0
        assert "flywheel_request_seconds_bucket" in text
    # the server shut down and sealed its segment: only the accepted events are visible
    assert landed(home, "sendgrid") == events
    assert not [p for p in (home / "landing" / "sendgrid").iterdir() if p.name.startswith(".")]


def test_sendgrid_age_check_can_be_disabled(tmp_path, sendgrid_keys):
    private, public_b64 = sendgrid_keys
    app = create_app(settings_for(tmp_path, FLYWHEEL_SENDGRID_PUBLIC_KEY=public_b64, FLYWHEEL_SENDGRID_MAX_AGE_S="0"))
    body = json.dumps([sg("m-1", "open", T0)]).encode()
    with serve_app(app) as base:
        r = httpx.post(f"{base}/webhooks/sendgrid", content=body, headers=sendgrid_headers(private, body, "1000"))
    assert r.status_code == 200


def _hubspot_events() -> list[dict]:
    base = {"portalId": 62515, "appId": 1160452, "attemptNumber": 0, "changeSource": "CRM_UI",
            "occurredAt": int(T0.timestamp() * 1000) + 86_400_000 * 20}
    return [
        {**base, "eventId": 101, "subscriptionId": 1, "subscriptionType": "deal.propertyChange", "objectId": 9001,
         "propertyName": "dealstage", "propertyValue": "closedwon"},
        {**base, "eventId": 102, "subscriptionId": 2, "subscriptionType": "object.creation", "objectTypeId": "0-47",
         "objectId": 7001},
        {**base, "eventId": 103, "subscriptionId": 3, "subscriptionType": "contact.propertyChange", "objectId": 5,
         "propertyName": "firstname", "propertyValue": "Ada"},
        {**base, "eventId": 104, "subscriptionId": 1, "subscriptionType": "deal.propertyChange", "objectId": 9002,
         "propertyName": "dealstage", "propertyValue": "appointmentscheduled"},
    ]


def test_hubspot_signed_events_are_enriched_into_crm_records(tmp_path):
    fake = FakeHubSpot()
    fake.add("deals", "9001", {"amount": "42000", "deal_currency_code": "EUR", "flywheel_message_id": "m-1"},
             contacts=["501"])
    fake.add("meetings", "7001", {}, contacts=["501"])
    fake.add("contacts", "501", {"email": "Ada@Acme.example", "flywheel_message_id": None})
    home = tmp_path / "fw"
    with serve_app(fake.app) as api:
        settings = settings_for(home, FLYWHEEL_HUBSPOT_CLIENT_SECRET=HUBSPOT_SECRET, FLYWHEEL_HUBSPOT_API_BASE=api,
                                FLYWHEEL_HUBSPOT_ACCESS_TOKEN="pat-test")
        with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
            body = json.dumps(_hubspot_events()).encode()
            # the signed URI is the full one, with HubSpot's decoded escapes (%3A -> ':')
            path = "/webhooks/hubspot?portal=62515&tag=a%3Ab"
            signed_url = f"{base}/webhooks/hubspot?portal=62515&tag=a:b"
            r = http.post(path, content=body, headers=hubspot_headers(signed_url, body))
            assert r.status_code == 200, r.text
            assert r.json() == {"accepted": 2, "ignored": 2, "unattributed": 0}
            stale = hubspot_headers(signed_url, body, int((time.time() - 301) * 1000))
            assert http.post(path, content=body, headers=stale).json()["error"] == "stale_timestamp"
            wrong = hubspot_headers(f"{base}/webhooks/other", body)
            assert http.post(path, content=body, headers=wrong).status_code == 401
            fake.fail_with = 503  # HubSpot's API down: ask HubSpot to retry, land nothing
            r = http.post(path, content=body, headers=hubspot_headers(signed_url, body))
            assert r.status_code == 503 and r.headers["retry-after"] == "60"
    records = landed(home, "crm")
    assert [(r["type"], r.get("message_id"), r.get("email")) for r in records] == [
        ("deal_closed", "m-1", "ada@acme.example"), ("meeting_booked", None, "ada@acme.example")]
    assert records[0]["deal_value"] == 42000.0 and records[0]["currency"] == "EUR"
    assert records[0]["event_id"] == "hubspot-62515-101" and records[0]["occurred_at"] == iso(T0 + timedelta(days=20))
    assert any("associations=contacts" in q for q in fake.requests)


def test_hubspot_without_enrichment_lands_unattributed_events_for_quarantine(tmp_path):
    home = tmp_path / "fw"
    with serve_app(create_app(settings_for(home))) as base:
        r = httpx.post(f"{base}/webhooks/hubspot", json=_hubspot_events()[:1])
        assert r.json() == {"accepted": 1, "ignored": 0, "unattributed": 1}
        assert httpx.post(f"{base}/webhooks/hubspot", json={"not": "a list"}).json()["error"] == "wrong_shape"
    assert landed(home, "crm")[0]["external"]["object_id"] == "9001"


def test_hubspot_client_leaves_deleted_objects_unattributed():
    from flywheel_pipeline.core.crm_webhooks import hubspot_facts

    fake = FakeHubSpot()
    with serve_app(fake.app) as api:
        client = HubSpotClient(api, "pat-test", "flywheel_message_id")
        fact = hubspot_facts(_hubspot_events()[:1], won_stages=["closedwon"], lost_stages=[]).facts[0]
        client.enrich(fact)  # 404: nothing to add, no error
        client.close()
    assert not fact.attributed and fact.deal_value is None


def test_pipedrive_basic_auth_and_v2_payloads(tmp_path):
    home = tmp_path / "fw"
    settings = settings_for(home, FLYWHEEL_PIPEDRIVE_USER="pd", FLYWHEEL_PIPEDRIVE_PASSWORD="s3cret",
                            FLYWHEEL_PIPEDRIVE_MESSAGE_ID_FIELD="a1b2c3")
    won = {"meta": {"action": "change", "entity": "deal", "entity_id": "77", "company_id": "5",
                    "timestamp": "2026-03-20T10:00:00Z", "version": "2.0"},
           "data": {"id": 77, "status": "won", "value": 12500, "currency": "USD", "won_time": "2026-03-20T09:59:00Z",
                    "custom_fields": {"a1b2c3": {"type": "varchar", "value": "m-1"}}},
           "previous": {"status": "open"}}
    renamed = {**won, "data": {**won["data"], "title": "new"}, "previous": {"title": "old"}}
    meeting = {"meta": {"action": "create", "entity": "activity", "entity_id": "8", "company_id": "5",
                        "timestamp": "2026-03-05T10:00:00Z", "version": "2.0"},
               "data": {"id": 8, "type": "meeting", "done": False, "add_time": "2026-03-05T10:00:00Z",
                        "custom_fields": {"a1b2c3": "m-1"}}, "previous": None}
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        assert http.post("/webhooks/pipedrive", json=won).status_code == 401
        bad = http.post("/webhooks/pipedrive", json=won, auth=("pd", "wrong"))
        assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Basic")
        for payload, expected in ((won, 1), (renamed, 0), (meeting, 1)):
            r = http.post("/webhooks/pipedrive", json=payload, auth=("pd", "s3cret"))
            assert r.status_code == 200 and r.json()["accepted"] == expected
        r = http.post("/webhooks/pipedrive", json={"data": {}}, auth=("pd", "s3cret"))
        assert r.status_code == 400 and "meta" in r.json()["detail"]
    records = landed(home, "crm")
    assert [(r["type"], r["message_id"], r.get("deal_value"), r.get("currency")) for r in records] == [
        ("deal_closed", "m-1", 12500.0, "USD"), ("meeting_booked", "m-1", None, None)]
    assert records[0]["occurred_at"] == "2026-03-20T09:59:00Z"


def test_messages_and_replies_need_the_organizations_key(tmp_path):
    home = tmp_path / "fw"
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, \
            httpx.Client(base_url=base) as http:
        one = {"Authorization": "Bearer key-one"}
        assert http.post("/messages", json=message("m-1")).status_code == 401
        assert http.post("/messages", json=message("m-1"), headers={"X-API-Key": "nope"}).status_code == 401
        r = http.post("/messages", json=message("m-2", org="org-2"), headers=one)
        assert r.status_code == 403 and r.json()["error"] == "unknown_organization"
        r = http.post("/messages", json=[message("m-1"), {**message("m-x"), "sent_at": "yesterday"}], headers=one)
        assert r.status_code == 400 and "record 1: invalid sent_at" in r.json()["detail"]
        assert http.post("/messages", json=[message("m-1"), message("m-3")], headers=one).json() == {"accepted": 2}
        assert http.post("/messages", json=message("m-2", org="org-2"),
                         headers={"X-API-Key": "key-two"}).status_code == 200
        replies = [
            {"reply_id": "r1", "received_at": iso(T0 + timedelta(days=1)), "from_email": "x@acme.example",
             "text": "Sounds great, let's talk", "headers": {"In-Reply-To": "<m-1@outreach.example>"}},
            {"reply_id": "r2", "received_at": iso(T0 + timedelta(days=1)), "text": "yes",
             "headers": {"references": "<m-0@outreach.example> <m-3@outreach.example> <zz@gmail.example>"}},
            {"reply_id": "r3", "received_at": iso(T0 + timedelta(days=1)), "from_email": "y@acme.example",
             "text": "hi", "headers": {"In-Reply-To": "<abc@gmail.example>"}},
        ]
        r = http.post("/replies", json=replies, headers=one)
        assert r.json() == {"accepted": 3, "attributed_by_headers": 2}
        r = http.post("/replies", json={"reply_id": "r4", "received_at": iso(T0), "text": "?"}, headers=one)
        assert r.status_code == 400 and "unattributable" in r.json()["detail"]
    assert [m["message_id"] for m in landed(home, "messages")] == ["m-1", "m-3", "m-2"]
    assert [r.get("message_id") for r in landed(home, "replies")] == ["m-1", "m-3", None]


def test_body_limit_and_rate_limit(tmp_path):
    settings = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_RATE_LIMIT_PER_MINUTE="3",
                            FLYWHEEL_MAX_BODY_BYTES="2000")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        big = json.dumps([sg("m", "open", T0) for _ in range(40)]).encode()
        r = http.post("/webhooks/sendgrid", content=big)
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"

        def chunks():  # no Content-Length: the limit holds while streaming
            for i in range(0, len(big), 500):
                yield big[i:i + 500]
        assert http.post("/webhooks/sendgrid", content=chunks()).status_code == 413
        one, two = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}
        codes = [http.post("/messages", json=message(f"m-{i}"), headers=one).status_code for i in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = http.post("/messages", json=message("m-9"), headers=one)
        assert 1 <= int(limited.headers["retry-after"]) <= 20 and limited.json()["error"] == "rate_limited"
        assert http.post("/messages", json=message("m-5", org="org-2"), headers=two).status_code == 200
        text = http.get("/metrics").text
        assert metric(text, "flywheel_requests_rejected_total", reason="rate_limited") == 2
        assert metric(text, "flywheel_requests_rejected_total", reason="body_too_large") == 2


def test_route_reads_the_published_routing_table_and_leaderboard(tmp_path):
    home = tmp_path / "fw"
    settings = settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DEFAULT_MODEL="gpt-4o-mini-2024-07-18")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        one = {"Authorization": "Bearer key-one"}
        r = http.get("/route", params={"lead_id": "lead-1", "organization_id": "org-1"}, headers=one)
        assert r.json()["model_id"] == "gpt-4o-mini-2024-07-18" and r.json()["ab_group"] == "default"
        assert http.get("/route", params={"lead_id": "l", "organization_id": "org-2"}, headers=one).status_code == 403
        assert http.get("/route", params={"organization_id": "org-1"}, headers=one).status_code == 422
        arms = [{"model_id": "ft:challenger", "version": "1.1.0", "ab_group": "challenger", "traffic_pct": 50.0},
                {"model_id": "ft:champion", "version": "1.0.0", "ab_group": "champion", "traffic_pct": 50.0}]
        write_routing({"version": 1, "families": {"flywheel-global-all": {"experiment_id": "exp-1", "arms": arms}}},
                      home / "routing.json")
        picks = {lead: http.get("/route", params={"lead_id": lead, "organization_id": "org-1",
                                                  "task_type": "cold_email"}, headers=one).json()["model_id"]
                 for lead in (f"lead-{i}" for i in range(60))}
        assert set(picks.values()) == {"ft:challenger", "ft:champion"}
        again = http.get("/route", params={"lead_id": "lead-7", "organization_id": "org-1"}, headers=one)
        assert again.json()["model_id"] == picks["lead-7"]  # sticky per lead
        assert again.json()["template_id"] is None  # no template routed yet
        template_arms = [
            {"template_id": "intro", "template_version": "1.1.0", "text": "Hi {{ first_name }}!",
             "ab_group": "challenger", "traffic_pct": 50.0},
            {"template_id": "intro", "template_version": "1.0.0", "text": "Hello {{ first_name }}.",
             "ab_group": "champion", "traffic_pct": 50.0}]
        write_routing({"version": 1, "families": {"flywheel-global-all": {"experiment_id": "exp-1", "arms": arms}},
                       "template_families": {"templates-global-all": {"experiment_id": "t-1",
                                                                      "arms": template_arms}}}, home / "routing.json")
        routed = {lead: http.get("/route", params={"lead_id": lead, "organization_id": "org-1"},
                                 headers=one).json() for lead in (f"lead-{i}" for i in range(60))}
        assert {r["model_id"] for r in routed.values()} == {"ft:challenger", "ft:champion"}
        assert {lead: r["model_id"] for lead, r in routed.items()} == {lead: picks[lead] for lead in routed}
        assert {r["template_version"] for r in routed.values()} == {"1.0.0", "1.1.0"}
        assert all(r["template_id"] == "intro" and r["template_allocation"].startswith("t-1@") for r in routed.values())
        again = http.get("/route", params={"lead_id": "lead-7", "organization_id": "org-1"}, headers=one).json()
        assert again["template_version"] == routed["lead-7"]["template_version"]  # sticky per lead
        assert http.get("/leaderboard", headers=one).status_code == 404
        (home / "leaderboard.json").write_text(json.dumps({
            "models": [{"model": "ft:champion", "rank": 1}],
            "organizations": {"org-1": [{"model": "ft:champion", "rank": 1}], "org-3": [{"model": "x", "rank": 1}]}}))
        assert http.get("/leaderboard", headers=one).json()["models"] == [{"model": "ft:champion", "rank": 1}]
        assert http.get("/leaderboard").status_code == 401  # with API keys configured, a key is needed
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["routing_published"] and "sendgrid" in health["unauthenticated"]


def test_what_the_service_lands_becomes_outcome_labels(tmp_path, sendgrid_keys):
    """End to end: records through HTTP, then the ingestion and labelling the refresh job runs."""
    private, public_b64 = sendgrid_keys
    home = tmp_path / "fw"
    fake = FakeHubSpot()
    fake.add("deals", "9001", {"amount": "60000", "deal_currency_code": "USD"}, contacts=["501"])
    fake.add("contacts", "501", {"flywheel_message_id": "m-1", "email": "lead-1@acme.example"})
    with serve_app(fake.app) as api:
        settings = settings_for(home, FLYWHEEL_SENDGRID_PUBLIC_KEY=public_b64, FLYWHEEL_HUBSPOT_API_BASE=api,
                                FLYWHEEL_HUBSPOT_ACCESS_TOKEN="pat-test", FLYWHEEL_API_KEYS=KEYS)
        with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
            auth = {"Authorization": "Bearer key-one"}
            assert http.post("/messages", json=message("m-1"), headers=auth).status_code == 200
            events = [sg("m-1", "delivered", T0 + timedelta(minutes=1)),
                      sg("m-1", "open", T0 + timedelta(hours=2))]
            body = json.dumps(events).encode()
            assert http.post("/webhooks/sendgrid", content=body,
                             headers=sendgrid_headers(private, body)).status_code == 200
            reply = {"reply_id": "r1", "received_at": iso(T0 + timedelta(days=1)), "text": "Yes, let's meet Tuesday",
                     "headers": {"In-Reply-To": "<m-1@outreach.example>"}}
            assert http.post("/replies", json=reply, headers=auth).status_code == 200
            deal = _hubspot_events()[:1]
            assert http.post("/webhooks/hubspot", json=deal).json()["unattributed"] == 0
    con = connect(tmp_path / "wh.duckdb")
    run_pipeline(con, home / "landing")
    row = con.execute("SELECT delivered, opened, replied, deal_closed, deal_value, quality_score "
                      "FROM outcome_labels WHERE message_id = 'm-1'").fetchone()
    con.close()
    assert row == (True, True, True, True, 60000.0, 1.0)


def _until(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _start(home: Path, port: int) -> subprocess.Popen:
    return start_flywheel_serve(home, port, FLYWHEEL_FSYNC_INTERVAL_S="0.2", FLYWHEEL_SEGMENT_MAX_BYTES="1048576")


def test_kill_minus_nine_mid_stream_loses_no_acknowledged_event(tmp_path):
    home = tmp_path / "fw"
    port = free_port()
    acked: list[int] = []
    stop = threading.Event()

    def post_forever(proc_port: int, n: int) -> None:
        # batch numbers never repeat (the second server starts at 100000), so a line seen twice
        # would be a duplicate made by the service, not a retry
        with httpx.Client(base_url=f"http://127.0.0.1:{proc_port}", timeout=5) as http:
            while not stop.is_set():
                batch = [{"sg_event_id": f"e{n}-{k}", "message_id": f"m-{n}", "event": "open",
                          "timestamp": int(T0.timestamp()) + n}
                         for k in range(5)]
                try:
                    ok = http.post("/webhooks/sendgrid", json=batch).status_code == 200
                except httpx.HTTPError:
                    return  # the server died mid-request: this batch was never acknowledged
                if ok:
                    acked.append(n)
                n += 1

    proc = _start(home, port)
    sender = threading.Thread(target=post_forever, args=(port, 0))
    sender.start()
    _until(lambda: len(acked) >= 150, "150 acknowledged batches")
    os.kill(proc.pid, signal.SIGKILL)  # no shutdown hook runs: the open segment stays open
    proc.wait()
    sender.join(timeout=10)
    before_restart = len(acked)
    assert list((home / "landing" / "sendgrid").glob(".*.open")), "expected a segment left open by the crash"

    proc = _start(home, port)  # recovery seals what the dead process left open
    stop.clear()
    sender = threading.Thread(target=post_forever, args=(port, 100_000))
    sender.start()
    _until(lambda: len(acked) >= before_restart + 50, "50 more acknowledged batches")
    stop.set()
    sender.join(timeout=10)
    proc.send_signal(signal.SIGTERM)  # graceful: the open segment is sealed (uvicorn re-raises the signal)
    assert proc.wait(timeout=20) in (0, -signal.SIGTERM)

    rows = landed(home, "sendgrid")
    ids = [r["sg_event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an event landed twice"
    order = [r["timestamp"] for r in rows]
    assert order == sorted(order), "events out of order"
    present = set(ids)
    missing = [n for n in acked if any(f"e{n}-{k}" not in present for k in range(5))]
    assert not missing, f"acknowledged batches lost: {missing[:10]}"
    assert not list((home / "landing" / "sendgrid").glob(".*"))


def test_serve_refuses_an_open_network_listener_without_api_keys_and_bad_config(monkeypatch, tmp_path, capsys):
    from flywheel_pipeline.cli import main

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "FLYWHEEL_API_KEYS" in capsys.readouterr().err
    monkeypatch.setenv("FLYWHEEL_API_KEYS", "org-1")
    assert main(["serve"]) == 2
    assert "bad configuration" in capsys.readouterr().err
