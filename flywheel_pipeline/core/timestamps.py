"""The one timestamp policy of the service and ingestion.

A timestamp is either ISO 8601 text in the extended form ``YYYY-MM-DD``, optionally followed
by ``T`` (or a space) ``HH:MM[:SS[.ffffff]]`` and an offset (``Z``, ``+HH``, ``+HHMM`` or
``+HH:MM``; none means UTC), or unix seconds (a finite JSON number). Other ISO 8601 forms
(``20240101T000000``, ``2024-W01-1``, ordinal dates, ``24:00``) are refused: the service and
ingestion accept exactly the same text (:data:`ISO_PATTERN` is used by both, in Python here and
in DuckDB's ``regexp_full_match`` in warehouse/ingest.py).

Plausible range: from :data:`EARLIEST` (2000-01-01 UTC) to :data:`MAX_FUTURE` (one day) after
the time of receipt (the request at the service, the ingestion run in the warehouse). A
non-finite number (NaN, Infinity) is refused.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from flywheel_pipeline.core.strict_json import finite_number

ISO_PATTERN = (r"\d{4}-\d{2}-\d{2}(?:[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?"
               r"(?:Z|[+-](?:[01]\d|2[0-3])(?::?[0-5]\d)?)?)?")
_ISO = re.compile(ISO_PATTERN)
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_FUTURE = timedelta(days=1)


class TimestampError(ValueError):
    """A timestamp outside the policy, with words for the sender."""


def _in_range(ts: datetime, name: str, received: datetime | None) -> datetime:
    received = received or datetime.now(timezone.utc)
    if ts < EARLIEST:
        raise TimestampError(f"invalid {name}: before {EARLIEST.date()} ({ts.isoformat()})")
    if ts > received + MAX_FUTURE:
        raise TimestampError(f"invalid {name}: more than a day in the future ({ts.isoformat()})")
    return ts


def parse_iso(value: Any, name: str, *, received: datetime | None = None) -> datetime:
    """ISO 8601 text under the policy, as an aware UTC datetime."""
    if not isinstance(value, str) or not _ISO.fullmatch(value):
        raise TimestampError(f"invalid {name}: not an ISO 8601 timestamp like 2024-05-01T09:30:00Z "
                             f"({str(value)[:60]!r})")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise TimestampError(f"invalid {name}: {exc} ({value[:60]!r})") from exc
    ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    return _in_range(ts, name, received)


def unix_range(received: datetime | None = None) -> tuple[float, float]:
    """The plausible range as unix seconds (for checking many timestamps of one request)."""
    return EARLIEST.timestamp(), (received or datetime.now(timezone.utc)).timestamp() + MAX_FUTURE.total_seconds()


def parse_unix_seconds(value: Any, name: str, *, received: datetime | None = None) -> datetime:
    """Unix seconds (a JSON number, or its text) under the policy, as an aware UTC datetime."""
    try:
        seconds = finite_number(value, name)
    except ValueError as exc:
        raise TimestampError(f"invalid {name}: not unix seconds ({exc})") from exc
    if seconds is None:
        raise TimestampError(f"invalid {name}: not unix seconds (missing)")
    earliest, latest = unix_range(received)
    if not earliest <= seconds <= latest:
        raise TimestampError(f"invalid {name}: {seconds:.0f} is before {EARLIEST.date()} or more than a day "
                             "in the future")
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def sql_range(column: str) -> str:
    """The same range as a DuckDB condition on a UTC ``TIMESTAMP`` column (receipt = now)."""
    return (f"({column} >= TIMESTAMP '{EARLIEST:%Y-%m-%d %H:%M:%S}' AND "
            f"{column} <= now()::TIMESTAMP + INTERVAL {MAX_FUTURE.days} DAY)")
