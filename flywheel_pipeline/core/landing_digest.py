"""Which landing files have been taken: per warehouse, landing zone and source, the digest
(core/landing.fingerprint) of the files ingestion listed when it last ran, kept in a small JSON
file under FLYWHEEL_HOME (a new or deleted warehouse has taken nothing). The
landing sensor compares the landing zone against it (and its own cursor) so that it launches a
refresh only for files nothing has taken yet, without opening the warehouse."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.landing import LandingListing
from flywheel_pipeline.core.atomic_json import write_json_atomic


def _zone(landing: Path | LandingListing, warehouse: str) -> str:
    return f"{warehouse}|{landing_zone.zone_url(landing)}"


def read_taken(path: Path, landing: Path | LandingListing, warehouse: str) -> dict[str, str]:
    """Per source, the digest ingestion into ``warehouse`` last took from the landing zone at ``landing``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    zone = value.get(_zone(landing, warehouse)) if isinstance(value, dict) else None
    return {str(k): str(v) for k, v in zone.items()} if isinstance(zone, dict) else {}


def record_taken(path: Path, landing: Path | LandingListing, warehouse: str, digests: dict[str, str]) -> None:
    """Merge ``digests`` (source -> digest, taken before ingestion listed the files) into the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        value = {}
    value = value if isinstance(value, dict) else {}
    key = _zone(landing, warehouse)
    value[key] = {**(value.get(key) if isinstance(value.get(key), dict) else {}), **digests}
    write_json_atomic(value, path)


def untaken_sources(landing: Path | LandingListing, taken: dict[str, str], seen: dict[str, str],
                    sources: Iterable[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(sources whose visible files neither ingestion nor the sensor's cursor has seen, the current
    digests). A source with no files is never untaken."""
    current = landing_zone.fingerprint(landing) if sources is None else landing_zone.fingerprint(landing, sources)
    changed = sorted(s for s, digest in current.items()
                     if not digest.startswith("0:") and digest not in (taken.get(s), seen.get(s)))
    return changed, current
