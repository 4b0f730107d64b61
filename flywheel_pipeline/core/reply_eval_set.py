"""Labelled replies: the evaluation set shipped with the project and users' own files.

One JSON object per line (UTF-8): ``id`` (unique), ``text`` (the reply body as received,
quoted mail and signature included), ``intent`` (one of :data:`INTENTS`), optional
``sentiment`` (default: the intent's, :data:`SENTIMENT_OF_INTENT`), ``subject``, ``headers``
(an object), ``language`` and ``organization_id`` (in a review file, the organization of the
warehouse reply ``id`` names, ``""`` for a reply that names none: ids are unique per
organization, so (``organization_id``, ``id``) is what must be unique). The shipped set (``flywheel_pipeline/data/reply_eval.jsonl``,
how it was made: docs/replies.md) is split once and for all by a hash of each id: the
*tuning* split trains and tunes the offline classifier, the *measuring* split only measures.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from flywheel_pipeline.core.reply_classifier import INTENTS, SENTIMENT_OF_INTENT, SENTIMENTS

SHIPPED_FILE = "reply_eval.jsonl"
SPLITS = ("tuning", "measuring")


@dataclass(frozen=True)
class LabelledReply:
    id: str
    text: str
    intent: str
    sentiment: str
    subject: str | None = None
    headers: Mapping[str, object] = field(default_factory=dict)
    language: str = "en"
    organization_id: str | None = None

    @property
    def split(self) -> str:
        return split_of(self.id)


class LabelledFileError(ValueError):
    """A labelled file that cannot be read: names the line and what is wrong with it."""


def split_of(reply_id: str) -> str:
    """``measuring`` for half the ids (by the first byte of their SHA-256), else ``tuning``;
    fixed forever, so nothing tuned ever sees a measuring reply."""
    return "measuring" if hashlib.sha256(reply_id.encode("utf-8")).digest()[0] % 2 else "tuning"


def parse_labelled_lines(lines: Iterable[str], source: str = "<lines>") -> list[LabelledReply]:
    rows: list[LabelledReply] = []
    seen: set[tuple[str | None, str]] = set()
    for line_no, line in enumerate(lines, start=1):
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabelledFileError(f"{source}:{line_no}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise LabelledFileError(f"{source}:{line_no}: not a JSON object")
        reply_id, text, intent = obj.get("id"), obj.get("text"), obj.get("intent")
        if not isinstance(reply_id, str) or not reply_id:
            raise LabelledFileError(f"{source}:{line_no}: 'id' must be a non-empty string")
        organization_id = obj.get("organization_id")
        if organization_id is not None and not isinstance(organization_id, str):
            raise LabelledFileError(f"{source}:{line_no}: 'organization_id' must be a string")
        if (organization_id, reply_id) in seen:
            raise LabelledFileError(f"{source}:{line_no}: duplicate id {reply_id!r}"
                                    + (f" of organization {organization_id!r}" if organization_id is not None else ""))
        if not isinstance(text, str):
            raise LabelledFileError(f"{source}:{line_no}: 'text' must be a string")
        if intent not in INTENTS:
            raise LabelledFileError(f"{source}:{line_no}: intent {intent!r} is not one of {', '.join(INTENTS)}")
        sentiment = obj.get("sentiment") or SENTIMENT_OF_INTENT[intent]
        if sentiment not in SENTIMENTS:
            raise LabelledFileError(f"{source}:{line_no}: sentiment {sentiment!r} is not one of "
                                    f"{', '.join(SENTIMENTS)}")
        headers = obj.get("headers") or {}
        if not isinstance(headers, dict):
            raise LabelledFileError(f"{source}:{line_no}: 'headers' must be an object")
        seen.add((organization_id, reply_id))
        rows.append(LabelledReply(reply_id, text, intent, sentiment, obj.get("subject"), headers,
                                  obj.get("language") or "en", organization_id))
    return rows


def read_labelled_file(path: str | Path) -> list[LabelledReply]:
    """Every row of a user's labelled JSONL file (raises :class:`LabelledFileError`)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_labelled_lines(f, str(path))
    except UnicodeDecodeError as exc:
        raise LabelledFileError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def shipped_text() -> str:
    return resources.files("flywheel_pipeline").joinpath("data", SHIPPED_FILE).read_text(encoding="utf-8")


def shipped_set(split: str | None = None) -> list[LabelledReply]:
    """The shipped evaluation set, or one of its splits (``tuning`` / ``measuring``)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    rows = parse_labelled_lines(shipped_text().splitlines(), SHIPPED_FILE)
    return [row for row in rows if split is None or row.split == split]
