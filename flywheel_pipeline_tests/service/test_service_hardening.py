"""The faults of the hardening issue, each over real HTTP on 127.0.0.1 (or through `flywheel serve`
and ingestion): permanently bad payloads are 4xx with a reason counted in /metrics, one strict
number policy, ids as strings, one timestamp policy, authentication that cannot be forgotten,
server timeouts and limits, private files."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from flywheel_pipeline.cli import bind_refusal, main
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.core.timestamps import TimestampError, parse_iso
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline.warehouse.ingest import ingest_source
from flywheel_pipeline_tests.conftest import T0, crm, message, sg
from flywheel_pipeline_tests.fakes.http import free_port, serve_app, start_flywheel_serve
from flywheel_pipeline_tests.service.test_service import (KEYS, landed, metric, sendgrid_headers, sendgrid_keys,  # noqa: F401
                                                  settings_for)

ONE = {"Authorization": "Bearer key-one"}
NOW_MS = int(time.time() * 1000)


def _hubspot(**event) -> list[dict]:
    return [{"portalId": 1, "eventId": 5, "subscriptionType": "deal.propertyChange", "objectId": 9,
             "propertyName": "dealstage", "propertyValue": "closedwon", "occurredAt": NOW_MS, **event}]


def _pipedrive(value) -> dict:
    return {"meta": {"action": "change", "entity": "deal", "entity_id": "77", "company_id": "5",
                     "timestamp": "2026-03-20T10:00:00Z"},
            "data": {"id": 77, "status": "won", "value": value, "currency": "USD", "won_time": "2026-03-20T09:59:00Z"},
            "previous": {"status": "open"}}


def _reply(**extra) -> dict:
    return {"reply_id": "r-1", "received_at": "2026-03-02T10:00:00Z", "from_email": "a@b.example", **extra}


# (name, method, path, body bytes or JSON value, status, reason)
BAD = [
    ("lone surrogate", "POST", "/webhooks/sendgrid",
     b'[{"sg_event_id": "\\ud800", "event": "open", "timestamp": 1772442000}]', 400, "malformed_json"),
    ("lone surrogate in a message", "POST", "/messages",
     b'{"message_id": "m", "organization_id": "org-1", "lead_id": "l", "sent_at": "2026-03-02T09:00:00Z", '
     b'"body": "x\\udfff"}', 400, "malformed_json"),
    ("not UTF-8", "POST", "/webhooks/sendgrid", b'[{"sg_event_id": "\xed\xa0\x80"}]', 400, "malformed_json"),
    ("deeply nested arrays", "POST", "/webhooks/sendgrid", b"[" * 100_000, 400, "too_deep"),
    ("deeply nested objects", "POST", "/replies", b'{"a":' * 40 + b"1" + b"}" * 40, 400, "too_deep"),
    ("integer of 5000 digits", "POST", "/webhooks/sendgrid", b'[{"timestamp": ' + b"9" * 5000 + b"}]", 400,
     "invalid_number"),
    ("integer beyond 64 bits", "POST", "/webhooks/pipedrive", json.dumps(_pipedrive(2**64)).encode(), 400,
     "invalid_number"),
    ("NaN literal", "POST", "/webhooks/sendgrid", b'[{"timestamp": NaN}]', 400, "invalid_number"),
    ("Infinity literal", "POST", "/webhooks/pipedrive", json.dumps(_pipedrive(float("inf"))).encode(), 400,
     "invalid_number"),
    ("overflowing number", "POST", "/webhooks/sendgrid", b'[{"timestamp": 1e400}]', 400, "invalid_number"),
    ("HubSpot propertyValue list", "POST", "/webhooks/hubspot", _hubspot(propertyValue=["closedwon"]), 400,
     "wrong_shape"),
    ("HubSpot propertyValue object", "POST", "/webhooks/hubspot", _hubspot(propertyValue={"a": 1}), 400,
     "wrong_shape"),
    ("HubSpot objectId boolean", "POST", "/webhooks/hubspot", _hubspot(objectId=True), 400, "wrong_shape"),
    ("HubSpot occurredAt in 2999", "POST", "/webhooks/hubspot", _hubspot(occurredAt=32503680000000), 400,
     "wrong_shape"),
    ("reply header list of numbers", "POST", "/replies", _reply(headers={"In-Reply-To": [1, 2]}), 400,
     "invalid_record"),
    ("reply header object", "POST", "/replies", _reply(headers={"References": {"a": "b"}}), 400, "invalid_record"),
    ("Pipedrive value of 400 digits", "POST", "/webhooks/pipedrive", _pipedrive("9" * 400), 400, "wrong_shape"),
    ("Pipedrive value NaN", "POST", "/webhooks/pipedrive", _pipedrive("NaN"), 400, "wrong_shape"),
    ("Pipedrive value Infinity", "POST", "/webhooks/pipedrive", _pipedrive("Infinity"), 400, "wrong_shape"),
    ("Pipedrive value boolean", "POST", "/webhooks/pipedrive", _pipedrive(True), 400, "wrong_shape"),
    ("message id true", "POST", "/messages", {**message("m"), "message_id": True}, 400, "invalid_record"),
    ("message id object", "POST", "/messages", {**message("m"), "message_id": {"a": 1}}, 400, "invalid_record"),
    ("lead id list", "POST", "/messages", {**message("m"), "lead_id": ["l"]}, 400, "invalid_record"),
    ("reply id fraction", "POST", "/replies", _reply(reply_id=1.5), 400, "invalid_record"),
    ("SendGrid event id boolean", "POST", "/webhooks/sendgrid",
     [{**sg("m", "open", T0), "sg_event_id": False}], 400, "invalid_record"),
    ("sent_at basic format", "POST", "/messages", {**message("m"), "sent_at": "20240101T000000"}, 400,
     "invalid_record"),
    ("sent_at week date", "POST", "/messages", {**message("m"), "sent_at": "2024-W01-1"}, 400, "invalid_record"),
    ("sent_at year 9999", "POST", "/messages", {**message("m"), "sent_at": "9999-01-01T00:00:00Z"}, 400,
     "invalid_record"),
    ("sent_at year 0001", "POST", "/messages", {**message("m"), "sent_at": "0001-01-01T00:00:00Z"}, 400,
     "invalid_record"),
    ("received_at two days ahead", "POST", "/replies",
     _reply(received_at=(datetime.now(timezone.utc) + timedelta(days=2)).isoformat()), 400, "invalid_record"),
    ("SendGrid timestamp 1970", "POST", "/webhooks/sendgrid", [{**sg("m", "open", T0), "timestamp": 0}], 400,
     "invalid_record"),
    ("SendGrid timestamp 2999", "POST", "/webhooks/sendgrid", [{**sg("m", "open", T0), "timestamp": 32503680000}],
     400, "invalid_record"),
    ("Pipedrive won_time 9999", "POST", "/webhooks/pipedrive",
     {**_pipedrive(1), "data": {**_pipedrive(1)["data"], "won_time": "9999-01-01T00:00:00Z"}}, 400, "wrong_shape"),
    ("unknown path", "GET", "/nowhere", None, 404, "not_found"),
    ("wrong method", "GET", "/messages", None, 405, "method_not_allowed"),
    ("unknown sub-path", "POST", "/webhooks/pipedrive/x", None, 404, "not_found"),
]


def test_every_permanently_bad_payload_is_a_4xx_with_its_reason_counted(tmp_path):
    home = tmp_path / "fw"
    with serve_app(create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS))) as base, \
            httpx.Client(base_url=base, headers=ONE, timeout=30) as http:
        for name, method, path, body, status, reason in BAD:
            content = body if isinstance(body, bytes | None) else json.dumps(body).encode()
            r = http.request(method, path, content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            assert set(r.json()) == {"error", "detail"} and r.json()["error"] == reason, (name, r.text[:300])
        text = http.get("/metrics").text
        for reason in {case[5] for case in BAD}:
            assert metric(text, "flywheel_requests_rejected_total", reason=reason) >= 1, reason
        assert 'status="5' not in text  # no 5xx at all
        # integer ids are landed as their text
        r = http.post("/messages", json={**message("m-int"), "message_id": 42, "lead_id": 7})
        assert r.status_code == 200, r.text
    assert [(m["message_id"], m["lead_id"]) for m in landed(home, "messages")] == [("42", "7")]
    assert not landed(home, "sendgrid") and not landed(home, "crm") and not landed(home, "replies")


def test_sendgrid_nan_timestamp_header_is_refused_and_the_default_tolerance_is_300s(tmp_path, sendgrid_keys):
    private, public_b64 = sendgrid_keys
    settings = settings_for(tmp_path, FLYWHEEL_SENDGRID_PUBLIC_KEY=public_b64)
    assert settings.sendgrid_max_age_s == 300
    body = json.dumps([sg("m-1", "open", T0)]).encode()
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        for ts in ("nan", "NaN", "inf", "-inf"):
            r = http.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(private, body, ts))
            assert r.status_code == 401, (ts, r.text)
        old = str(int(time.time()) - 400)
        r = http.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(private, body, old))
        assert (r.status_code, r.json()["error"]) == (401, "stale_timestamp")
        assert http.post("/webhooks/sendgrid", content=body,
                         headers=sendgrid_headers(private, body)).status_code == 200


def test_invalid_sendgrid_public_key_is_a_configuration_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_SENDGRID_PUBLIC_KEY", "not-a-key")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "bad configuration" in err and "Traceback" not in err


def test_public_bind_refuses_while_any_enabled_route_is_unauthenticated(monkeypatch, tmp_path, capsys,
                                                                        sendgrid_keys):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_API_KEYS", KEYS)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "sendgrid, hubspot, pipedrive" in err and "messages" not in err
    keys_only = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS)
    assert bind_refusal("10.1.2.3", keys_only, allow_unauthenticated=False)
    assert bind_refusal("::", keys_only, allow_unauthenticated=False)
    assert bind_refusal("127.0.0.1", keys_only, allow_unauthenticated=False) is None
    assert bind_refusal("0.0.0.0", keys_only, allow_unauthenticated=True) is None
    off = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_DISABLED_ROUTES="sendgrid,hubspot,pipedrive")
    assert bind_refusal("0.0.0.0", off, allow_unauthenticated=False) is None
    everything = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_SENDGRID_PUBLIC_KEY=sendgrid_keys[1],
                              FLYWHEEL_HUBSPOT_CLIENT_SECRET="s", FLYWHEEL_PIPEDRIVE_USER="u",
                              FLYWHEEL_PIPEDRIVE_PASSWORD="p")
    assert bind_refusal("0.0.0.0", everything, allow_unauthenticated=False) is None
    no_keys = settings_for(tmp_path, FLYWHEEL_DISABLED_ROUTES="sendgrid,hubspot,pipedrive")
    assert "messages, replies, route, leaderboard" in bind_refusal("0.0.0.0", no_keys, allow_unauthenticated=False)
    with pytest.raises(ValueError):
        settings_for(tmp_path, FLYWHEEL_DISABLED_ROUTES="sendgird")
    # a switched-off route is not there
    with serve_app(create_app(off)) as base:
        r = httpx.post(f"{base}/webhooks/sendgrid", json=[])
        assert (r.status_code, r.json()["error"]) == (404, "not_found")


def _recv_all(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


@pytest.mark.slow
def test_slow_clients_are_timed_out_and_a_disconnect_is_one_log_line(tmp_path):
    home, port = tmp_path / "fw", free_port()
    proc = start_flywheel_serve(home, port, FLYWHEEL_HEADER_TIMEOUT_S="1", FLYWHEEL_BODY_TIMEOUT_S="1",
                                FLYWHEEL_MAX_CONNECTIONS="300")
    try:
        slow = []
        for _ in range(100):  # slow-loris: headers that never end
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        started = time.monotonic()
        for s in slow:
            assert _recv_all(s, 10) == b""  # closed by the server, no answer
            s.close()
        assert time.monotonic() - started < 10
        # headers in time, body too slow: 408 with the JSON shape
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n[{\"a\":")
            answer = _recv_all(s, 10)
        assert answer.startswith(b"HTTP/1.1 408") and b'"error":"body_timeout"' in answer
        # a client that goes away mid-body
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /webhooks/sendgrid HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{")
        time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        # landing segments are the owner's only
        assert httpx.post(f"http://127.0.0.1:{port}/webhooks/sendgrid", json=[sg("m", "open", T0)],
                          timeout=5).status_code == 200
        [segment] = list((home / "landing" / "sendgrid").iterdir())
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    log = err.decode()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("disconnected before sending its whole body") == 1, log[-3000:]
    assert "no complete request headers within 1s" in log
    for f in (home / "landing" / "sendgrid").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_ingestion_quarantines_non_finite_numbers_and_implausible_times(con, landing):
    now = datetime.now(timezone.utc)
    write_jsonl(landing, "messages", [
        message("ok"), {**message("basic"), "sent_at": "20240101T000000"}, {**message("week"), "sent_at": "2024-W01-1"},
        {**message("y9999"), "sent_at": "9999-01-01T00:00:00Z"}, {**message("y1"), "sent_at": "0001-01-01T00:00:00Z"},
        {**message("nan-cost"), "cost_usd": "NaN"}, {**message("inf-latency"), "latency_ms": "Infinity"},
        {**message("huge-cost"), "cost_usd": 1e27}, {**message("negative-cost"), "cost_usd": -0.01},
        {**message("top-cost"), "lead_id": "lead-top", "cost_usd": 1_000_000}])
    write_jsonl(landing, "crm", [
        crm("c-nan", "deal_closed", T0, message_id="ok", deal_value="NaN"),
        crm("c-inf", "deal_closed", T0, message_id="ok", deal_value="Infinity"),
        '{"event_id": "c-big", "type": "deal_closed", "occurred_at": "2026-03-02T09:00:00Z", "message_id": "ok", '
        '"deal_value": 1e400}',
        crm("c-9999", "deal_closed", T0, message_id="ok") | {"occurred_at": "9999-01-01T00:00:00Z"},
        crm("c-ok", "deal_closed", T0, message_id="ok", deal_value=5)])
    write_jsonl(landing, "sendgrid", [sg("ok", "open", T0), {**sg("ok", "open", T0), "timestamp": 0},
                                      {**sg("ok", "open", T0), "timestamp": 32503680000},
                                      {**sg("ok", "open", T0), "timestamp": (now + timedelta(days=2)).timestamp()}])
    for source in ("messages", "crm", "sendgrid"):
        ingest_source(con, landing, source)
    reasons = dict(con.execute("SELECT source || ':' || line_no, reason FROM quarantine").fetchall())
    assert con.execute("SELECT list(message_id ORDER BY message_id) FROM messages").fetchone()[0] == ["ok", "top-cost"]
    assert con.execute("SELECT list(event_id) FROM crm_events").fetchone()[0] == ["c-ok"]
    assert con.execute("SELECT count(*) FROM email_events").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM crm_events WHERE NOT isfinite(deal_value)").fetchone()[0] == 0
    assert reasons["messages:6"] == "invalid cost_usd: not a finite number"
    assert reasons["messages:7"] == "invalid latency_ms: not a finite number"
    # beyond what a message can cost (1e27 would overflow the exact DECIMAL(38, 12) cost sums)
    assert reasons["messages:8"] == reasons["messages:9"] == "invalid cost_usd: outside 0 to 1000000 USD"
    assert reasons["crm:1"] == reasons["crm:2"] == "invalid deal_value: not a finite number"
    assert reasons["crm:3"].startswith("invalid deal_value")
    assert reasons["crm:4"].startswith("invalid occurred_at: before 2000-01-01 or more than a day")
    assert all(reasons[f"sendgrid:{n}"].startswith("invalid timestamp") for n in (2, 3, 4))
    assert reasons["messages:2"] == reasons["messages:3"] == "invalid sent_at: not an ISO 8601 timestamp"


TIMES = ["2026-03-02T09:00:00Z", "2026-03-02 09:00", "2026-03-02", "2026-03-02T09:00:00.123456+05:30",
         "2026-03-02T09:00:00+0100", "2026-03-02T09:00:00-01", "2026-02-30T00:00:00Z", "2026-03-02T24:00:00Z",
         "2026-03-02T09:00:60Z", "20260302T090000", "2026-W10-1", "2026-061", "1999-12-31T23:59:59Z",
         "2000-01-01T00:00:00Z", "9999-12-31T00:00:00Z", "2026-03-02t09:00:00z", "2026-03-02Z", " 2026-03-02",
         "2026-03-02T09:00:00.1234567Z", "NaN", "", "2026-3-2"]


def test_the_service_and_ingestion_accept_exactly_the_same_timestamps(con, landing):
    def service_accepts(text: str) -> bool:
        try:
            parse_iso(text, "sent_at")
        except TimestampError:
            return False
        return True

    write_jsonl(landing, "messages", [{**message(f"m{i}"), "sent_at": t} for i, t in enumerate(TIMES)])
    ingest_source(con, landing, "messages")
    loaded = {row[0] for row in con.execute("SELECT message_id FROM messages").fetchall()}
    disagree = [t for i, t in enumerate(TIMES) if (f"m{i}" in loaded) != service_accepts(t)]
    assert not disagree
    assert 4 <= len(loaded) < len(TIMES)


def test_files_the_flywheel_command_creates_are_private(home, monkeypatch):
    old = os.umask(0o022)
    try:
        assert main(["simulate", "--days", "1", "--messages-per-day", "5", "--leads-per-org", "5"]) == 0
        assert os.umask(0o022) == 0o077  # the command set it for itself and what it starts
    finally:
        os.umask(old)
    files = [p for p in (home / "landing").rglob("*")]
    assert files and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in files)


def test_failed_authentication_is_rate_limited_before_credentials_are_checked(tmp_path):
    settings = settings_for(tmp_path, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_AUTH_FAILURES_PER_MINUTE="3",
                            FLYWHEEL_PIPEDRIVE_USER="pd", FLYWHEEL_PIPEDRIVE_PASSWORD="s3cret")
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        assert http.post("/messages", json=message("m1"), headers=ONE).status_code == 200
        for guess in ("a", "b", "c"):
            r = http.post("/messages", json=message("m2"), headers={"Authorization": f"Bearer {guess}"})
            assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        r = http.post("/messages", json=message("m2"), headers={"Authorization": "Bearer d"})
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited") and int(r.headers["retry-after"]) >= 1
        # over its budget, the client is refused before its key is looked at, on every route
        assert http.post("/messages", json=message("m2"), headers=ONE).status_code == 429
        assert http.post("/webhooks/pipedrive", json={}, auth=("pd", "guess")).status_code == 429
        text = http.get("/metrics").text
        assert metric(text, "flywheel_requests_rejected_total", reason="unauthorized") == 3
    assert [m["message_id"] for m in landed(tmp_path, "messages")] == ["m1"]


def test_several_keys_are_valid_at_once_for_rotation(tmp_path, sendgrid_keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public_b64 = sendgrid_keys
    new_private = ec.generate_private_key(ec.SECP256R1())
    other_private = ec.generate_private_key(ec.SECP256R1())
    new_public = base64.b64encode(new_private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    settings = settings_for(tmp_path, FLYWHEEL_API_KEYS="org-1=old-key,org-2=key-two,org-1=new-key",
                            FLYWHEEL_SENDGRID_PUBLIC_KEY=f"{public_b64},{new_public}")
    body = json.dumps([sg("m-1", "open", T0)]).encode()
    with serve_app(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        for key in ("old-key", "new-key"):
            r = http.post("/messages", json=message(f"m-{key}"), headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
        assert http.post("/messages", json=message("m-x"), headers={"X-API-Key": "key-two"}).status_code == 403
        for signer in (private, new_private):
            assert http.post("/webhooks/sendgrid", content=body,
                             headers=sendgrid_headers(signer, body)).status_code == 200
        r = http.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(other_private, body))
        assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    with pytest.raises(ValueError):
        settings_for(tmp_path, FLYWHEEL_SENDGRID_PUBLIC_KEY=f"{public_b64},not-a-key")


def test_the_flywheel_home_is_created_private_without_the_commands_umask(tmp_path):
    from flywheel_pipeline.warehouse.schema import connect

    old = os.umask(0o022)  # a process started outside `flywheel` (e.g. a bare `dagster dev`)
    try:
        connect(tmp_path / "fw" / "warehouse.duckdb").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "fw").stat().st_mode) == 0o700
