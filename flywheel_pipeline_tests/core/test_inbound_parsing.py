"""The service's pure parts: CRM payload normalization, record checks, reply threading,
the rate limiter, the HubSpot URI rule and the settings parser."""

from __future__ import annotations

import pytest

from flywheel_pipeline.core.crm_webhooks import PayloadError, hubspot_facts, pipedrive_facts
from flywheel_pipeline.core.inbound_records import RecordError, check_message, check_reply, message_id_from_headers
from flywheel_pipeline.core.signatures import hubspot_signed_uri
from flywheel_pipeline.service.rate_limit import RateLimiter
from flywheel_pipeline.service.settings import ServiceSettings, parse_api_keys


def _hs(**event):
    return {"eventId": 1, "portalId": 9, "occurredAt": 1_767_225_600_000, "objectId": 5, **event}


@pytest.mark.parametrize("event, expected", [
    (_hs(subscriptionType="deal.propertyChange", propertyName="dealstage", propertyValue="won-enterprise"),
     "deal_closed"),
    (_hs(subscriptionType="object.propertyChange", objectTypeId="0-3", propertyName="dealstage",
         propertyValue="closedlost"), "deal_lost"),
    (_hs(subscriptionType="object.propertyChange", objectTypeId="0-47", propertyName="hs_meeting_outcome",
         propertyValue="COMPLETED"), "meeting_completed"),
    (_hs(subscriptionType="object.creation", objectTypeId="0-47"), "meeting_booked"),
    (_hs(subscriptionType="object.propertyChange", objectTypeId="0-47", propertyName="hs_meeting_outcome",
         propertyValue="NO_SHOW"), None),
    (_hs(subscriptionType="deal.propertyChange", propertyName="amount", propertyValue="5"), None),
    (_hs(subscriptionType="deal.creation"), None),
])
def test_hubspot_events_map_to_crm_types(event, expected):
    out = hubspot_facts([event], won_stages=["closedwon", "won-enterprise"], lost_stages=["closedlost"])
    assert [f.type for f in out.facts] == ([expected] if expected else []) and out.ignored == (expected is None)
    if expected:
        assert out.facts[0].occurred_at == "2026-01-01T00:00:00Z" and out.facts[0].event_id == "hubspot-9-1"


@pytest.mark.parametrize("body, message", [
    ({"eventId": 1}, "array"), ([3], "not an object"), ([{"subscriptionType": "deal.creation"}], "lacks"),
    ([_hs(subscriptionType="object.creation", objectTypeId="0-47", occurredAt="soon")], "millisecond"),
])
def test_hubspot_payload_errors(body, message):
    with pytest.raises(PayloadError, match=message):
        hubspot_facts(body, won_stages=["closedwon"], lost_stages=[])


def _pd(entity, action, data, previous):
    return {"meta": {"entity": entity, "action": action, "entity_id": "1", "timestamp": "2026-01-01T00:00:00Z",
                     "company_id": 3}, "data": data, "previous": previous}


@pytest.mark.parametrize("body, expected", [
    (_pd("deal", "change", {"status": "won", "value": "10.5", "currency": "EUR", "c1": "m-1"}, {"status": "open"}),
     ("deal_closed", 10.5, "m-1")),
    (_pd("deal", "create", {"status": "won", "value": 7, "custom_fields": {"c1": {"value": "m-2"}}}, None),
     ("deal_closed", 7.0, "m-2")),
    (_pd("deal", "change", {"status": "lost"}, {"status": "open"}), ("deal_lost", None, None)),
    (_pd("deal", "change", {"status": "won", "value": 3}, {"value": 2}), None),  # already won: no new fact
    (_pd("activity", "change", {"type": "meeting", "done": True}, {"done": False}), ("meeting_completed", None, None)),
    (_pd("activity", "change", {"type": "meeting", "done": True}, {"subject": "x"}), None),
    (_pd("activity", "create", {"type": "call"}, None), None),
])
def test_pipedrive_v2_payloads(body, expected):
    out = pipedrive_facts(body, message_id_field="c1")
    got = [(f.type, f.deal_value, f.message_id) for f in out.facts]
    assert got == ([expected] if expected else [])


def test_pipedrive_payload_errors():
    for body in ([], {"data": {}}, {"meta": {"entity": "deal"}}):
        with pytest.raises(PayloadError):
            pipedrive_facts(body, message_id_field=None)
    with pytest.raises(PayloadError, match="not a number"):
        pipedrive_facts(_pd("deal", "change", {"status": "won", "value": "lots"}, {"status": "open"}),
                        message_id_field=None)


def test_record_checks_mirror_ingestions_quarantine_reasons():
    good = {"message_id": "m", "organization_id": "o", "lead_id": "l", "sent_at": "2026-01-01T09:00:00Z"}
    check_message(good)
    for broken, reason in (({**good, "message_id": " "}, "missing message_id"),
                           ({**good, "sent_at": "monday"}, "invalid sent_at"),
                           ({k: v for k, v in good.items() if k != "lead_id"}, "missing lead_id"),
                           ({**good, "metadata": [1]}, "metadata must be an object"), ([good], "JSON object")):
        with pytest.raises(RecordError, match=reason):
            check_message(broken)
    # the message id a reply is threaded to comes back; one given, or from_email alone, gives None
    assert check_reply({"reply_id": "r", "received_at": "2026-01-01", "from_email": "a@b.example"}) is None
    threaded = {"reply_id": "r", "received_at": "2026-01-01", "headers": {"In-Reply-To": "<m-7@outreach.example>"}}
    assert check_reply(threaded, ["outreach.example"]) == "m-7"
    assert check_reply({**threaded, "message_id": "m-1"}, ["outreach.example"]) is None
    with pytest.raises(RecordError, match="headers must be an object"):
        check_reply({"reply_id": "r", "received_at": "2026-01-01", "message_id": "m", "headers": "x"})
    foreign = {"reply_id": "r", "received_at": "2026-01-01", "headers": {"In-Reply-To": "<a@gmail.example>"}}
    with pytest.raises(RecordError, match="unattributable"):
        check_reply(foreign, ["outreach.example"])


def test_threading_prefers_in_reply_to_then_the_nearest_reference():
    domains = ["outreach.example", "mail.acme.example"]
    assert message_id_from_headers({"IN-REPLY-TO": "<m-9@Outreach.Example>"}, domains) == "m-9"
    refs = {"References": "<m-1@outreach.example>\r\n <m-2@mail.acme.example> <x@other.example>"}
    assert message_id_from_headers(refs, domains) == "m-2"
    both = {"In-Reply-To": "<x@other.example>", "References": "<m-1@outreach.example>"}
    assert message_id_from_headers(both, domains) == "m-1"
    assert message_id_from_headers({"In-Reply-To": "m-1@outreach.example"}, domains) is None  # no angle brackets
    assert message_id_from_headers({}, domains) is None


def test_rate_limiter_refills_over_time():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one a second, bursts of 60
    assert all(limiter.acquire("a") == 0 for _ in range(60))
    assert limiter.acquire("a") == 1 and limiter.acquire("b") == 0
    now[0] = 2.5
    assert limiter.acquire("a") == 0 and limiter.acquire("a") == 0 and limiter.acquire("a") == 1
    assert RateLimiter(0).acquire("a") == 0  # disabled
    many = RateLimiter(60, clock=lambda: now[0])
    many.MAX_KEYS = 3
    for key in "abcd":
        many.acquire(key)
    now[0] += 120  # all refilled: forgotten when a new key arrives, and nothing about them is lost
    assert many.acquire("e") == 0 and len(many._buckets) == 1


def test_hubspot_signed_uri_decodes_only_its_listed_escapes():
    uri = "https://h.example/webhooks/hubspot?a=%3A%2f%3F%40%21%24%27%28%29%2A%2C%3B&b=%20%26"
    assert hubspot_signed_uri(uri) == "https://h.example/webhooks/hubspot?a=:/?@!$'()*,;&b=%20%26"


def test_settings_from_env():
    s = ServiceSettings.from_env({"FLYWHEEL_HOME": "/tmp/fw", "FLYWHEEL_API_KEYS": "o1=k1, o2=k2",
                                  "FLYWHEEL_HUBSPOT_WON_STAGES": "closedwon,123", "FLYWHEEL_SENDGRID_MAX_AGE_S": "0"})
    assert s.landing == "/tmp/fw/landing" and s.hubspot_won_stages == ("closedwon", "123")
    assert s.api_keys["o2"][0].get_secret_value() == "k2" and "k1" not in repr(s)  # secrets never printed
    assert s.sendgrid_max_age_s == 0 and "sendgrid" in s.unverified_sources()
    for bad in ("o1", "o1=", "o1=k,o2=k"):
        with pytest.raises(ValueError):
            parse_api_keys(bad)
    with pytest.raises(ValueError):
        ServiceSettings.from_env({"FLYWHEEL_HOME": "/tmp/fw", "FLYWHEEL_RATE_LIMIT_PER_MINUTE": "-1"})
