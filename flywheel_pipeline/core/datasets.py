"""Training-data policy, free of Dagster and DuckDB: how a sent message becomes an example,
how near-duplicates are recognised, and which side of the split a lead falls on."""

from __future__ import annotations

import hashlib
import re

_WS = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")
_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}|\[(?:EMAIL|PHONE|URL)\]")


def assistant_text(subject: str | None, body: str | None) -> str:
    """The assistant turn of an example: the e-mail as the model wrote it."""
    body = (body or "").strip()
    subject = (subject or "").strip()
    return f"Subject: {subject}\n\n{body}" if subject else body


def dedupe_key(redacted_text: str) -> str:
    """Key under which exact and near-duplicate texts collide.

    Works on *redacted* text, where names are already merge fields and contact details
    placeholders, so "the same template with different names" normalizes to one string;
    case, whitespace, placeholders and digits are ignored too."""
    text = _PLACEHOLDER.sub(" ", redacted_text.lower())
    text = _DIGITS.sub("0", text)
    text = _WS.sub(" ", text).strip()
    return hashlib.sha256(text.encode()).hexdigest()[:32]


SPLIT_SALT = "flywheel-split-v1"


def lead_bucket(lead_id: str, salt: str = SPLIT_SALT) -> float:
    """A stable number in [0, 1) per lead: the first 15 hex digits of sha256(salt:lead_id).
    The warehouse computes the same value in SQL (see warehouse/datasets.py)."""
    return int(hashlib.sha256(f"{salt}:{lead_id}".encode()).hexdigest()[:15], 16) / 16**15


def split_for_lead(lead_id: str, validation_fraction: float, salt: str = SPLIT_SALT) -> str:
    """'train' or 'validation', from a stable hash of the lead id: a lead never straddles."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    return "validation" if lead_bucket(lead_id, salt) < validation_fraction else "train"
