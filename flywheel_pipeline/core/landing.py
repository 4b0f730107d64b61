"""The landing-zone contract.

``<landing>/<source>/*.jsonl`` holds one JSON object per line. Writers create a file under a
hidden temporary name in the same directory, fsync it, and rename it into place, so a
reader never sees a partial file; a visible file never changes afterwards. Readers list
only visible ``*.jsonl`` names. Files are created readable by their owner only (0600) and
hold strict JSON (never NaN or Infinity).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SOURCES: tuple[str, ...] = ("messages", "sendgrid", "crm", "replies", "feedback")
# What people write rather than the outside world: reviewed reply labels
# (`flywheel replies correct`), which override the reply classifier.
LABEL_SOURCES: tuple[str, ...] = ("reply_labels",)
# What the flywheel itself derives: the AI council's preference pairs (POST /council).
DERIVED_SOURCES: tuple[str, ...] = ("council_pairs",)
ALL_SOURCES: tuple[str, ...] = SOURCES + LABEL_SOURCES + DERIVED_SOURCES


@dataclass(frozen=True)
class LandingFile:
    source: str
    path: Path | None  # a local file; None for an object in object storage (see ``key``)
    size_bytes: int
    key: str | None = None  # the object's key in object storage (landing_store.S3Store)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else (self.key or "").rsplit("/", 1)[-1]


class LandingListing(Protocol):
    """A landing zone that lists its sealed files (a directory or object storage: landing_store.py)."""

    url: str

    def list_files(self, source: str) -> list[LandingFile]: ...


def zone_url(landing: Path | LandingListing) -> str:
    """A landing zone's identity: an absolute directory or its object-storage URL."""
    return landing.url if hasattr(landing, "url") else str(Path(landing).absolute())


def source_dir(landing: Path, source: str) -> Path:
    if source not in ALL_SOURCES:
        raise ValueError(f"unknown landing source {source!r}; expected one of {', '.join(ALL_SOURCES)}")
    return landing / source


def write_jsonl(landing: Path, source: str, records: Iterable[Mapping[str, Any] | str],
                name: str | None = None) -> Path:
    """Write records atomically as a new landing file and return its final path.

    A record that is a ``str`` is written verbatim as one line (used to land lines that
    arrived malformed, so that ingestion can quarantine them instead of losing them).
    """
    directory = source_dir(landing, source)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    final_name = name or f"{source}-{uuid.uuid4().hex}.jsonl"
    if not final_name.endswith(".jsonl") or "/" in final_name or final_name.startswith("."):
        raise ValueError(f"landing file names are plain '*.jsonl' names, got {final_name!r}")
    final = directory / final_name
    if final.exists():
        raise FileExistsError(f"landing files are immutable and {final} already exists")
    tmp = directory / f".{final_name}.{uuid.uuid4().hex}.tmp"
    # personal data: readable by the owner only; strict JSON (NaN and Infinity raise ValueError)
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
        for record in records:
            line = record if isinstance(record, str) else json.dumps(record, separators=(",", ":"),
                                                                      default=str, allow_nan=False)
            if "\n" in line:
                raise ValueError("a landing record must fit on one line")
            fh.write(line)
            fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, final)
    fsync_dir(directory)
    return final


def fsync_dir(directory: Path) -> None:
    """Make a rename or create in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_files(landing: Path, source: str) -> list[LandingFile]:
    """Visible landing files of one source, in name order (temporary files are skipped)."""
    directory = source_dir(landing, source)
    if not directory.is_dir():
        return []
    files = []
    for entry in os.scandir(directory):
        if entry.is_file() and entry.name.endswith(".jsonl") and not entry.name.startswith("."):
            files.append(LandingFile(source, Path(entry.path), entry.stat().st_size))
    files.sort(key=lambda f: f.name)
    return files


def fingerprint(landing: Path | LandingListing, sources: Iterable[str] = ALL_SOURCES) -> dict[str, str]:
    """A cheap digest per source of which files are visible (names and sizes).

    The landing sensor compares digests to decide whether to launch an ingestion run;
    exactly-once ingestion itself is enforced by the warehouse's ``landing_files`` table.
    """
    out: dict[str, str] = {}
    for source in sources:
        h = hashlib.sha256()
        count = 0
        files = landing.list_files(source) if hasattr(landing, "list_files") else list_files(landing, source)
        for f in files:
            h.update(f"{f.name}\0{f.size_bytes}\n".encode())
            count += 1
        out[source] = f"{count}:{h.hexdigest()[:16]}"
    return out
