"""Property-based fuzzing of every route of the ingestion service over real HTTP on 127.0.0.1.

Hypothesis generates JSON documents of every shape (NaN, Infinity, huge and boolean numbers,
lone surrogates, deep nesting), mutates valid payloads field by field and byte by byte, and
posts them: no answer is a 5xx, every refusal has the documented ``{"error", "detail"}`` shape,
the server stays up, and every line that lands is strict JSON (RFC 8259, UTF-8). Examples are
derandomized (the same on every run) and their number is bounded."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.service.app import create_app
from flywheel_pipeline_tests.conftest import T0, message, sg
from flywheel_pipeline_tests.fakes.http import serve_app
from flywheel_pipeline_tests.service.test_service import KEYS, settings_for

pytestmark = pytest.mark.slow
NOW_MS = int(time.time() * 1000)
TEMPLATES = {
    "/webhooks/sendgrid": [sg("m-1", "delivered", T0, sg_event_id="e1", sg_message_id="x.filter"),
                           sg("m-1", "open", T0, sg_event_id="e2", sg_machine_open=False)],
    "/webhooks/hubspot": [{"portalId": 1, "eventId": 5, "subscriptionType": "deal.propertyChange", "objectId": 9,
                           "propertyName": "dealstage", "propertyValue": "closedwon", "occurredAt": NOW_MS},
                          {"portalId": 1, "eventId": 6, "subscriptionType": "object.creation", "objectTypeId": "0-47",
                           "objectId": 10, "occurredAt": NOW_MS}],
    "/webhooks/pipedrive": {"meta": {"action": "change", "entity": "deal", "entity_id": "77", "company_id": "5",
                                     "timestamp": "2026-03-20T10:00:00Z"},
                            "data": {"id": 77, "status": "won", "value": 12500, "currency": "USD",
                                     "won_time": "2026-03-20T09:59:00Z", "person": {"emails": ["a@b.example"]},
                                     "custom_fields": {"mid": {"value": "m-1"}}},
                            "previous": {"status": "open"}},
    "/messages": [message("m-1", metadata={"first_name": "Ada"}), message("m-2", lead="lead-2")],
    "/replies": [{"reply_id": "r-1", "received_at": "2026-03-02T10:00:00Z", "from_email": "a@b.example",
                  "subject": "Re", "text": "thanks", "headers": {"In-Reply-To": "<m-1@outreach.example>",
                                                                "References": ["<m-0@outreach.example>"]}}],
    "/feedback": [{"message_id": "m-1", "rating": 4, "rater": "ada", "comment": "clear ask",
                   "rated_at": "2026-03-02T10:00:00Z"}, {"message_id": "m-2", "rating": 1, "feedback_id": "f-2"}],
}
WEIRD_TEXT = ["\ud800", "\udfff", "x\ud83d", "", " ", "NaN", "Infinity", "-Infinity", "1e400", "9" * 400,
              "20240101T000000", "2024-W01-1", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "\x00", "é\u2028",
              "<a@outreach.example>", "true", "null", "{}", "[]"]
WEIRD_NUMBERS = [math.nan, math.inf, -math.inf, 1e308 * 10, 2**63, -(2**63) - 1, 10**400, 0, -1, 1e-320,
                 True, False, 32503680000, 32503680000000]

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20) | st.sampled_from(WEIRD_TEXT) | st.sampled_from(WEIRD_NUMBERS))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(WEIRD_TEXT), inner, max_size=4),
                           max_leaves=12)


def _containers(value, path=()):
    """Every (path, container) in a JSON value."""
    if isinstance(value, dict):
        yield path, value
        for key, item in value.items():
            yield from _containers(item, (*path, key))
    elif isinstance(value, list):
        yield path, value
        for i, item in enumerate(value):
            yield from _containers(item, (*path, i))


@st.composite
def mutated(draw, template):
    """A copy of ``template`` with a few fields replaced, added or removed."""
    value = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 3))):
        _, node = draw(st.sampled_from(list(_containers(value))))
        action = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if isinstance(node, dict):
            key = (draw(st.sampled_from(sorted(node))) if node and action != "add"
                   else draw(st.text(max_size=8) | st.sampled_from(WEIRD_TEXT)))
            if action == "delete":
                node.pop(key, None)
            else:
                node[key] = draw(json_values)
        elif node and action != "add":
            index = draw(st.integers(0, len(node) - 1))
            if action == "delete":
                node.pop(index)
            else:
                node[index] = draw(json_values)
        else:
            node.append(draw(json_values))
    return value


def _encode(value, ascii_only: bool) -> bytes:
    # Python's encoder writes NaN/Infinity tokens and, with ensure_ascii, lone surrogates as
    # \\udXXX escapes: exactly the non-standard input a sender may post
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def byte_mutated(draw, template):
    raw = bytearray(_encode(template, True))
    for _ in range(draw(st.integers(1, 4))):
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip":
            raw[i] = draw(st.integers(0, 255))
        elif op == "insert":
            raw[i:i] = draw(st.sampled_from([b"[", b"{", b'"', b"\\", b"NaN", b"1e999", b"\xff", b"\xed\xa0\x80",
                                             b"\\ud800", b",", b"9" * 30, b"-"]))
        elif op == "delete":
            del raw[i]
        else:
            del raw[i:]
    return bytes(raw)


routes = st.sampled_from(sorted(TEMPLATES))


@st.composite
def requests(draw):
    path = draw(routes)
    template = TEMPLATES[path]
    kind = draw(st.sampled_from(["mutated", "mutated", "bytes", "any", "deep"]))
    if kind == "bytes":
        return path, draw(byte_mutated(template))
    if kind == "deep":
        depth = draw(st.integers(20, 3000))
        return path, (b"[" * depth + b"]" * depth) if draw(st.booleans()) else b'{"a":' * depth + b"1" + b"}" * depth
    value = draw(mutated(template)) if kind == "mutated" else draw(json_values)
    return path, _encode(value, draw(st.booleans()))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz") / "fw"
    app = create_app(settings_for(home, FLYWHEEL_API_KEYS=KEYS, FLYWHEEL_RATE_LIMIT_PER_MINUTE="0",
                                  FLYWHEEL_PIPEDRIVE_MESSAGE_ID_FIELD="mid"))
    with serve_app(app) as base, httpx.Client(base_url=base, timeout=30,
                                              headers={"Authorization": "Bearer key-one"}) as http:
        yield home, http, app.state.metrics
    # the server has shut down and sealed its segments: every landed line is strict JSON
    lines = 0
    for source in landing_zone.SOURCES:
        for f in landing_zone.list_files(home / "landing", source):
            for line in f.path.read_bytes().splitlines():
                value = json.loads(line.decode("utf-8"), parse_constant=_refuse_constant)
                assert isinstance(value, dict)
                lines += 1
    assert lines > 0, "the fuzzer landed nothing: its valid payloads are not valid any more"


def _refuse_constant(name):
    raise AssertionError(f"{name} landed")


def _check(http: httpx.Client, method: str, path: str, **kw) -> httpx.Response:
    r = http.request(method, path, **kw)
    assert r.status_code < 500, (path, r.status_code, r.text[:500], kw.get("content", b"")[:300])
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error", "detail"} and body["error"] and isinstance(body["detail"], str)
    return r


FUZZ = settings(max_examples=2500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(request=requests())
def test_fuzzed_payloads_never_get_a_5xx(service, request):
    _, http, _ = service
    path, body = request
    _check(http, "POST", path, content=body, headers={"Content-Type": "application/json"})


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(lead=st.text(max_size=30) | st.sampled_from(WEIRD_TEXT), org=st.text(max_size=10) | st.just("org-1"),
       task=st.text(max_size=10), path=st.sampled_from(["/route", "/leaderboard", "/healthz", "/metrics", "/x"]),
       method=st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE"]))
def test_fuzzed_queries_never_get_a_5xx(service, lead, org, task, path, method):
    _, http, _ = service
    # httpx encodes a lone surrogate it cannot send as UTF-8 only with errors; send its escape
    params = {k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
              for k, v in {"lead_id": lead, "organization_id": org, "task_type": task}.items()}
    _check(http, method, path, params=params)


def test_valid_payloads_still_land_after_the_fuzzing(service):
    _, http, metrics = service
    for path, template in TEMPLATES.items():
        r = _check(http, "POST", path, json=template)
        assert r.status_code == 200, (path, r.text)
    assert http.get("/healthz").json()["status"] == "ok"
    served = metrics.requests.collect()[0].samples
    assert sum(s.value for s in served if s.labels.get("status", "").startswith("5")) == 0
    assert sum(s.value for s in served) >= 2500
