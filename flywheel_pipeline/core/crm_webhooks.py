"""CRM webhook payloads (HubSpot, Pipedrive) turned into the landing zone's CRM event records.

Pure functions, no I/O: the ingestion service calls them after verifying a request, and
fills in what a payload does not carry (HubSpot sends only ids) through the CRM's API.

A CRM record (the ``crm`` landing source, see core/landing.py)::

    {"event_id", "source", "type", "message_id" | "lead_id" | "email", "occurred_at",
     "deal_value", "currency", "external": {...provider ids...}}

``event_id`` is stable for the same fact, so a provider's retry lands a duplicate that
ingestion skips (first copy wins).

HubSpot (webhooks API, an array of events; legacy ``deal.*`` and generic ``object.*``
subscription types):

* deal ``dealstage`` changed to a won stage id -> ``deal_closed``; to a lost stage id ->
  ``deal_lost`` (stage ids are per pipeline: ``closedwon`` / ``closedlost`` in the default one);
* a meeting (object type ``0-47``) created -> ``meeting_booked``; its ``hs_meeting_outcome``
  set to ``COMPLETED`` -> ``meeting_completed``;
* everything else is ignored and counted.

Pipedrive (webhooks v2: ``meta`` / ``data`` / ``previous``):

* a deal whose ``status`` became ``won`` -> ``deal_closed`` with ``value`` and ``currency``;
  became ``lost`` -> ``deal_lost``;
* an activity of type ``meeting`` added -> ``meeting_booked``; marked done -> ``meeting_completed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel_pipeline.core.strict_json import canonical_id, finite_number
from flywheel_pipeline.core.timestamps import TimestampError, parse_iso, parse_unix_seconds

HUBSPOT_DEAL_TYPE = "0-3"
HUBSPOT_MEETING_TYPE = "0-47"
HUBSPOT_CONTACT_TYPE = "0-1"
_HUBSPOT_LEGACY_TYPES = {"deal": HUBSPOT_DEAL_TYPE, "contact": HUBSPOT_CONTACT_TYPE}


class PayloadError(ValueError):
    """The request body has the wrong shape for this provider (a 400 for the sender)."""


@dataclass
class CrmFact:
    """One normalized CRM event, before attribution is filled in."""

    event_id: str
    source: str
    type: str
    occurred_at: str
    object_type: str            # HubSpot object type id, or Pipedrive entity
    object_id: str
    message_id: str | None = None
    email: str | None = None
    lead_id: str | None = None
    deal_value: float | None = None
    currency: str | None = None
    external: dict[str, Any] = field(default_factory=dict)

    @property
    def attributed(self) -> bool:
        return bool(self.message_id or self.email or self.lead_id)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_id": self.event_id, "source": self.source, "type": self.type,
                               "occurred_at": self.occurred_at}
        for key in ("message_id", "lead_id", "email", "deal_value", "currency"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["external"] = {"object_type": self.object_type, "object_id": self.object_id, **self.external}
        return out


@dataclass
class Normalized:
    facts: list[CrmFact]
    ignored: int


def _iso_ms(ms: Any) -> str:
    if isinstance(ms, bool) or not isinstance(ms, int | float | str):
        raise PayloadError(f"occurredAt is not a millisecond timestamp: {str(ms)[:40]!r}")
    try:
        seconds = float(ms) / 1000
    except (ValueError, OverflowError) as exc:
        raise PayloadError(f"occurredAt is not a millisecond timestamp: {str(ms)[:40]!r}") from exc
    try:
        ts = parse_unix_seconds(seconds, "occurredAt")
    except TimestampError as exc:
        raise PayloadError(str(exc)) from exc
    return ts.isoformat().replace("+00:00", "Z")


def _iso(value: Any, name: str) -> str:
    """A provider's time as our ISO text, checked under the shared timestamp policy."""
    text = str(value).replace(" ", "T") if isinstance(value, str) else value
    try:
        parse_iso(text, name)
    except TimestampError as exc:
        raise PayloadError(str(exc)) from exc
    return text


def _id(value: Any, name: str) -> str:
    try:
        return canonical_id(value, name)
    except ValueError as exc:
        raise PayloadError(str(exc)) from exc


def hubspot_facts(events: Any, *, won_stages: Iterable[str], lost_stages: Iterable[str]) -> Normalized:
    """Normalize a HubSpot webhook request body (a JSON array of events)."""
    if not isinstance(events, list):
        raise PayloadError("HubSpot posts a JSON array of events")
    won, lost = set(won_stages), set(lost_stages)
    facts: list[CrmFact] = []
    ignored = 0
    for i, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise PayloadError(f"event {i} is not an object")
        sub = str(event.get("subscriptionType") or "")
        if "." not in sub or event.get("objectId") is None or event.get("eventId") is None:
            raise PayloadError(f"event {i} lacks subscriptionType, objectId or eventId")
        kind, action = sub.split(".", 1)
        object_id, event_id = _id(event["objectId"], "objectId"), _id(event["eventId"], "eventId")
        portal = _id(event["portalId"], "portalId") if event.get("portalId") is not None else None
        object_type = _id(event.get("objectTypeId") or _HUBSPOT_LEGACY_TYPES.get(kind, kind), "objectTypeId")
        prop, value = event.get("propertyName"), event.get("propertyValue")
        if isinstance(value, dict | list) or isinstance(prop, dict | list):
            raise PayloadError(f"event {i}: propertyName and propertyValue are text, not objects or arrays")
        fact_type = None
        if object_type == HUBSPOT_DEAL_TYPE and action == "propertyChange" and prop == "dealstage":
            fact_type = "deal_closed" if value in won else "deal_lost" if value in lost else None
        elif object_type == HUBSPOT_MEETING_TYPE:
            if action == "creation":
                fact_type = "meeting_booked"
            elif action == "propertyChange" and prop == "hs_meeting_outcome" and str(value).upper() == "COMPLETED":
                fact_type = "meeting_completed"
        if fact_type is None:
            ignored += 1
            continue
        facts.append(CrmFact(
            event_id=f"hubspot-{portal}-{event_id}", source="hubspot", type=fact_type,
            occurred_at=_iso_ms(event.get("occurredAt")), object_type=object_type,
            object_id=object_id,
            external={"portal_id": portal, "subscription_type": sub, "property_value": value}))
    return Normalized(facts, ignored)


def _custom_field(data: Mapping[str, Any], key: str | None) -> str | None:
    """A Pipedrive custom field's value: v2 nests them under ``custom_fields`` (a plain value
    or ``{"value": ..., "type": ...}``); flat payloads carry them at the top level."""
    if not key:
        return None
    custom = data.get("custom_fields")
    value = custom.get(key) if isinstance(custom, Mapping) else None
    if value is None:
        value = data.get(key)
    if isinstance(value, Mapping):
        value = value.get("value")
    return _id(value, f"custom field {key}") if value is not None and value != "" else None


def _person_email(data: Mapping[str, Any]) -> str | None:
    person = data.get("person")
    emails = person.get("emails") or person.get("email") if isinstance(person, Mapping) else None
    if isinstance(emails, list):
        emails = next((e.get("value") if isinstance(e, Mapping) else e for e in emails), None)
    return emails.strip().lower() if isinstance(emails, str) and emails.strip() else None


def pipedrive_facts(body: Any, *, message_id_field: str | None) -> Normalized:
    """Normalize one Pipedrive webhooks v2 request body."""
    if not isinstance(body, Mapping) or not isinstance(body.get("meta"), Mapping):
        raise PayloadError("Pipedrive webhooks v2 post an object with 'meta', 'data' and 'previous'")
    meta = body["meta"]
    data = body.get("data") or {}
    previous = body.get("previous") or {}
    if not isinstance(data, Mapping) or not isinstance(previous, Mapping):
        raise PayloadError("'data' and 'previous' must be objects (or null)")
    entity, action = meta.get("entity") or "", meta.get("action") or ""
    if not isinstance(entity, str) or not isinstance(action, str):
        raise PayloadError("meta.entity and meta.action are text")
    raw_id = meta.get("entity_id") or data.get("id")
    entity_id = _id(raw_id, "entity_id") if raw_id is not None else ""
    company = _id(meta["company_id"], "company_id") if meta.get("company_id") is not None else ""
    if not entity or not action or not entity_id:
        raise PayloadError("meta lacks entity, action or entity_id")
    fact_type, occurred = None, None
    if entity == "deal" and action in ("change", "create", "added", "updated"):
        # v2's ``previous`` holds only the fields that changed
        status = data.get("status")
        if action in ("create", "added") or ("status" in previous and previous["status"] != status):
            if status == "won":
                fact_type, occurred = "deal_closed", data.get("won_time")
            elif status == "lost":
                fact_type, occurred = "deal_lost", data.get("lost_time")
    elif entity == "activity" and data.get("type") == "meeting":
        if action in ("create", "added"):
            fact_type, occurred = "meeting_booked", data.get("add_time")
        elif data.get("done") is True and "done" in previous and not previous["done"]:
            fact_type, occurred = "meeting_completed", data.get("marked_as_done_time")
    if fact_type is None:
        return Normalized([], 1)
    occurred = occurred or meta.get("timestamp")
    if not occurred:
        raise PayloadError("no time for the event (meta.timestamp missing)")
    value = data.get("value") if fact_type == "deal_closed" else None
    try:
        deal_value = finite_number(value, "deal value")
    except ValueError as exc:
        raise PayloadError(str(exc)) from exc
    if deal_value is not None and deal_value < 0:
        raise PayloadError("deal value is negative")
    currency = data.get("currency") if fact_type == "deal_closed" else None
    if currency is not None and not isinstance(currency, str):
        raise PayloadError("currency is text")
    return Normalized([CrmFact(
        event_id=f"pipedrive-{company}-{entity}-{entity_id}-{fact_type}",
        source="pipedrive", type=fact_type, occurred_at=_iso(occurred, "occurred time"),
        object_type=entity, object_id=entity_id,
        message_id=_custom_field(data, message_id_field), email=_person_email(data),
        deal_value=deal_value, currency=currency,
        external={"company_id": meta.get("company_id"), "action": action})], 0)
