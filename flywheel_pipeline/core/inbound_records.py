"""Checks for the records the outreach app posts (messages, replies, ratings), and reply threading.

The service refuses a record it can tell is wrong (a clear 400 beats a quarantined line
nobody reads) but otherwise lands it as sent, with integer ids turned into their text:
ingestion stays the authority on parsing. The checks mirror ingestion's quarantine reasons
(warehouse/ingest.py); timestamps follow the shared policy of core/timestamps.py.

Threading: the outreach app sends each message with ``Message-ID: <message_id@domain>``;
a reply names it in ``In-Reply-To`` (its parent) or ``References`` (the thread, oldest
first). :func:`message_id_from_headers` returns our message id from those headers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import datetime, timezone
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


# ---- feedback: people's 1-5 ratings of a message (POST /feedback, landing/feedback) ----------

RATING_MIN, RATING_MAX = 1, 5
COMMENT_MAX_CHARS = 2000
RATER_MAX_CHARS = 200
FEEDBACK_FIELDS = ("feedback_id", "message_id", "organization_id", "rating", "rater", "comment", "rated_at")


class RatingError(RecordError):
    """A rating that is not an integer from 1 to 5 (the service's reason ``invalid_rating``)."""


def check_rating(value: Any) -> int:
    """A rating is a JSON integer from 1 to 5: booleans, fractions (4.5, also 4.0), text ("5"),
    null and anything out of range are refused."""
    if type(value) is not int or not RATING_MIN <= value <= RATING_MAX:
        shown = "missing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"
        raise RatingError(f"invalid rating: an integer from {RATING_MIN} to {RATING_MAX}, not {shown}")
    return value


def feedback_id(organization_id: str | None, message_id: str, rater: str | None, rated_at: datetime | None,
                rating: int | None = None, comment: str | None = None) -> str:
    """The id of a rating that carries none, so a retried post of the same rating is a duplicate
    ingestion skips. With ``rated_at`` given: from what it rates, who rates and when. Without it
    (the time of receipt would differ on a retry): from what it rates, who rates, the rating and
    the comment; the same person giving the same rating and comment again counts once (send a
    ``feedback_id`` or ``rated_at`` to keep each)."""
    if rated_at is not None:
        parts = (organization_id or "", message_id, rater or "",
                 rated_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    else:
        parts = ("content", organization_id or "", message_id, rater or "", str(rating), comment or "")
    return "fb-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def check_feedback(record: Any, *, received: datetime | None = None) -> None:
    """Check one rating and complete it in place: ids as text, ``rated_at`` the time of receipt
    when absent, ``feedback_id`` derived when absent (:func:`feedback_id`). Unknown fields are
    refused (a rating has a fixed shape). Raises :class:`RatingError` for the rating and
    :class:`RecordError` for the rest."""
    if not isinstance(record, Mapping):
        raise RecordError("a rating is a JSON object")
    unknown = sorted(str(k)[:40] for k in record if k not in FEEDBACK_FIELDS)
    if unknown:
        raise RecordError(f"unknown field(s) {', '.join(unknown)}; a rating has {', '.join(FEEDBACK_FIELDS)}")
    if record.get("rater") == "":  # as ingestion reads it: no rater
        record["rater"] = None
    _ids(record, ("message_id",), ("organization_id", "feedback_id", "rater"))
    check_rating(record.get("rating"))
    if record.get("rater") is not None and len(record["rater"]) > RATER_MAX_CHARS:
        raise RecordError(f"rater longer than {RATER_MAX_CHARS} characters")
    comment = record.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise RecordError("comment must be text")
    if comment is not None and len(comment) > COMMENT_MAX_CHARS:
        raise RecordError(f"comment longer than {COMMENT_MAX_CHARS} characters")
    received = received or datetime.now(timezone.utc)
    given_time = record.get("rated_at") not in (None, "")
    if not given_time:
        record["rated_at"] = received.astimezone(timezone.utc).isoformat(timespec="microseconds").replace(
            "+00:00", "Z")
    try:
        rated_at = parse_iso(record["rated_at"], "rated_at", received=received)
    except TimestampError as exc:
        raise RecordError(str(exc)) from exc
    if record.get("feedback_id") is None:
        record["feedback_id"] = feedback_id(record.get("organization_id"), record["message_id"],
                                            record.get("rater"), rated_at if given_time else None,
                                            record["rating"], comment)
