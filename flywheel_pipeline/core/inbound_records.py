"""Checks for the records the outreach app posts (messages, replies), and reply threading.

The service refuses a record it can tell is wrong (a clear 400 beats a quarantined line
nobody reads) but otherwise lands it exactly as sent: ingestion stays the authority on
parsing. The checks mirror ingestion's quarantine reasons (warehouse/ingest.py).

Threading: the outreach app sends each message with ``Message-ID: <message_id@domain>``;
a reply names it in ``In-Reply-To`` (its parent) or ``References`` (the thread, oldest
first). :func:`message_id_from_headers` returns our message id from those headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

_MSG_ID = re.compile(r"<([^<>@\s]+)@([^<>\s]+)>")


class RecordError(ValueError):
    """A record the service refuses, with the reason for the sender."""


def _timestamp(record: Mapping[str, Any], key: str) -> None:
    value = record.get(key)
    if value in (None, ""):
        raise RecordError(f"missing {key}")
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise RecordError(f"invalid {key}: not an ISO 8601 timestamp ({value!r})") from exc


def _required(record: Mapping[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        value = record.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RecordError(f"missing {key}")
        if not isinstance(value, str | int):
            raise RecordError(f"{key} must be a string")


def check_message(record: Any) -> None:
    if not isinstance(record, Mapping):
        raise RecordError("a message is a JSON object")
    _required(record, ("message_id", "organization_id", "lead_id"))
    _timestamp(record, "sent_at")
    if "metadata" in record and record["metadata"] is not None and not isinstance(record["metadata"], Mapping):
        raise RecordError("metadata must be an object")


def check_reply(record: Any, domains: Iterable[str] | None = None) -> str | None:
    """Check a reply; for one without ``message_id``, return the message id its headers thread
    it to (None: ingestion attributes it by ``from_email``). ``domains``: those of our
    Message-IDs (see :func:`message_id_from_headers`)."""
    if not isinstance(record, Mapping):
        raise RecordError("a reply is a JSON object")
    _required(record, ("reply_id",))
    _timestamp(record, "received_at")
    headers = record.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise RecordError("headers must be an object")
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
