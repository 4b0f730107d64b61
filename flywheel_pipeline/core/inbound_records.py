"""Checks for the records the outreach app posts (messages, replies), and reply threading.

The service refuses a record it can tell is wrong (a clear 400 beats a quarantined line
nobody reads) but otherwise lands it as sent, with integer ids turned into their text:
ingestion stays the authority on parsing. The checks mirror ingestion's quarantine reasons
(warehouse/ingest.py); timestamps follow the shared policy of core/timestamps.py.

Threading: the outreach app sends each message with ``Message-ID: <message_id@domain>``;
a reply names it in ``In-Reply-To`` (its parent) or ``References`` (the thread, oldest
first). :func:`message_id_from_headers` returns our message id from those headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from flywheel_pipeline.core.strict_json import canonical_id
from flywheel_pipeline.core.timestamps import TimestampError, parse_iso, parse_unix_seconds, unix_range

_MSG_ID = re.compile(r"<([^<>@\s]+)@([^<>\s]+)>")


class RecordError(ValueError):
    """A record the service refuses, with the reason for the sender."""


def _timestamp(record: Mapping[str, Any], key: str) -> None:
    value = record.get(key)
    if value in (None, ""):
        raise RecordError(f"missing {key}")
    try:
        parse_iso(value, key)
    except TimestampError as exc:
        raise RecordError(str(exc)) from exc


def _ids(record: MutableMapping[str, Any], required: Iterable[str], optional: Iterable[str] = ()) -> None:
    """Ids are strings: integers are replaced by their decimal text in the record; booleans,
    fractions, objects and arrays are refused; a required id must not be empty."""
    for key in (*required, *optional):
        value = record.get(key)
        if value is None and key not in required:
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RecordError(f"missing {key}")
        try:
            record[key] = canonical_id(value, key)
        except ValueError as exc:
            raise RecordError(str(exc)) from exc


def check_message(record: Any) -> None:
    if not isinstance(record, Mapping):
        raise RecordError("a message is a JSON object")
    _ids(record, ("message_id", "organization_id", "lead_id"), ("campaign_id",))
    _timestamp(record, "sent_at")
    if "metadata" in record and record["metadata"] is not None and not isinstance(record["metadata"], Mapping):
        raise RecordError("metadata must be an object")


def check_reply(record: Any, domains: Iterable[str] | None = None) -> str | None:
    """Check a reply; for one without ``message_id``, return the message id its headers thread
    it to (None: ingestion attributes it by ``from_email``). ``domains``: those of our
    Message-IDs (see :func:`message_id_from_headers`)."""
    if not isinstance(record, Mapping):
        raise RecordError("a reply is a JSON object")
    _ids(record, ("reply_id",), ("message_id", "organization_id"))
    _timestamp(record, "received_at")
    headers = record.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise RecordError("headers must be an object")
    for name, value in (headers or {}).items():
        if not (isinstance(value, str) or value is None
                or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise RecordError(f"header {name[:60]!r} must be text or a list of texts")
    if record.get("message_id"):
        return None
    threaded = message_id_from_headers(headers or {}, domains)
    if threaded is None and not record.get("from_email"):
        raise RecordError("unattributable: no message_id, no In-Reply-To/References of ours, no from_email")
    return threaded


def _header(headers: Mapping[str, Any], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return " ".join(value) if isinstance(value, list) else str(value or "")
    return ""


def message_id_from_headers(headers: Mapping[str, Any], domains: Iterable[str] | None) -> str | None:
    """Our message id from In-Reply-To, else the nearest References entry of ours.

    ``domains`` are the right-hand sides of our Message-IDs; None accepts any domain."""
    allowed = None if domains is None else {d.lower() for d in domains}
    candidates = _MSG_ID.findall(_header(headers, "in-reply-to"))
    candidates += list(reversed(_MSG_ID.findall(_header(headers, "references"))))
    for local, domain in candidates:
        if allowed is None or domain.lower() in allowed:
            return local
    return None


def check_sendgrid_events(events: list[Any]) -> None:
    """The elements of a SendGrid Event Webhook array: objects whose ids are text (integers
    replaced by their text) and whose ``timestamp`` is unix seconds under the shared policy.
    Other fields land as sent; ingestion checks the event type and attribution. Raises
    RecordError naming the first bad event (the common case is checked inline: this runs for
    every event the service takes)."""
    earliest, latest = unix_range()
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise RecordError(f"event {i}: not an event object")
        if not (type(event.get("sg_event_id")) is str and type(event.get("message_id", "")) is str
                and type(event.get("sg_message_id", "")) is str):
            try:
                _ids(event, ("sg_event_id",), ("message_id", "sg_message_id"))
            except RecordError as exc:
                raise RecordError(f"event {i}: {exc}") from exc
        if type(event.get("event")) is not str or not event["event"]:
            raise RecordError(f"event {i}: event must be the event type's name")
        ts = event.get("timestamp")
        if type(ts) is int and earliest <= ts <= latest:
            continue
        if ts is None:
            raise RecordError(f"event {i}: missing timestamp")
        try:
            parse_unix_seconds(ts, "timestamp")
        except TimestampError as exc:
            raise RecordError(f"event {i}: {exc}") from exc
