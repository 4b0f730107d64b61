"""The outcome-labelling policy: which stage a message reached and what that is worth.

This module is the single source of the policy's numbers. The warehouse SQL
(``warehouse/labels.py``) is rendered from a :class:`LabelPolicy`, and
``docs/labelling.md`` documents the defaults (a test keeps the two in step).
:func:`score_stage` is the same rule in plain Python, used as the reference in tests.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Funnel stages from shallowest to deepest. The quality score is the value of the deepest
# stage reached (plus the deal-value bonus for closed deals); spam reports and
# unsubscribes are handled separately (see LabelPolicy.negative_score).
STAGES: tuple[str, ...] = (
    "sent",
    "bounced",
    "delivered",
    "opened",
    "clicked",
    "replied",
    "positive_reply",
    "meeting_booked",
    "meeting_completed",
    "deal_closed",
)

DEFAULT_STAGE_SCORES: dict[str, float] = {
    "sent": 0.0,
    "bounced": 0.1,
    "delivered": 0.1,
    "opened": 0.2,
    "clicked": 0.3,
    "replied": 0.4,
    "positive_reply": 0.6,
    "meeting_booked": 0.7,
    "meeting_completed": 0.8,
    "deal_closed": 0.9,
}


class LabelPolicy(BaseModel):
    """The default labelling policy; every number here is configurable per run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage_scores: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STAGE_SCORES))
    deal_bonus: float = Field(0.1, ge=0, le=1, description="Added to deal_closed, scaled by value.")
    deal_value_cap: float = Field(50_000.0, gt=0, description="Deal value at which the bonus is full.")
    negative_score: float = Field(0.0, ge=0, le=1, description="Score of a spam report or unsubscribe.")
    maturity_days: int = Field(14, ge=0, description="Days after sent_at after which a label is final.")
    scanner_click_window_s: float = Field(
        5.0, ge=0, description="Clicks this soon after delivery are security-scanner clicks.")
    attribution_window_days: int = Field(
        90, ge=1, description="CRM events without message_id attach to the lead's latest message "
                              "sent at most this many days before the event.")

    @model_validator(mode="after")
    def _check_scores(self) -> "LabelPolicy":
        missing = set(STAGES) - set(self.stage_scores)
        unknown = set(self.stage_scores) - set(STAGES)
        if missing or unknown:
            raise ValueError(f"stage_scores must name exactly the stages {STAGES}; "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        for stage, value in self.stage_scores.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"stage score for {stage!r} must be in [0, 1], got {value}")
        if self.stage_scores["deal_closed"] + self.deal_bonus > 1.0 + 1e-12:
            raise ValueError("deal_closed score plus deal_bonus must not exceed 1.0")
        return self

    def fingerprint(self) -> str:
        """A short stable hash; labels are recomputed in full when the policy changes."""
        payload = json.dumps(self.model_dump(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def deepest_stage(*, delivered: bool, bounced: bool, opened: bool, clicked: bool, replied: bool,
                  positive_reply: bool, meeting_booked: bool, meeting_completed: bool,
                  deal_closed: bool) -> str:
    """The deepest funnel stage the evidence shows (evidence, not implication)."""
    for stage, reached in (
        ("deal_closed", deal_closed),
        ("meeting_completed", meeting_completed),
        ("meeting_booked", meeting_booked),
        ("positive_reply", positive_reply),
        ("replied", replied),
        ("clicked", clicked),
        ("opened", opened),
        ("delivered", delivered),
        ("bounced", bounced),
    ):
        if reached:
            return stage
    return "sent"


def score_stage(policy: LabelPolicy, stage: str, *, deal_value: float | None = None,
                negative: bool = False) -> float:
    """Reference implementation of the quality score (the SQL must agree with it).

    ``negative`` is True when a spam report or unsubscribe counts against the message
    (see docs/labelling.md for when a later meeting or deal outranks an unsubscribe).
    """
    if negative:
        return policy.negative_score
    score = policy.stage_scores[stage]
    if stage == "deal_closed":
        value = max(0.0, float(deal_value or 0.0))
        score += policy.deal_bonus * min(value, policy.deal_value_cap) / policy.deal_value_cap
    return round(min(1.0, max(0.0, score)), 6)


def parse_as_of(text: str) -> datetime:
    """The time maturity is measured against, from ISO 8601 text (``Z`` or an offset; a date
    alone is its midnight; no offset means UTC). Raises ValueError for anything else."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"as_of must be an ISO 8601 time (e.g. 2026-05-01T00:00:00Z), got {text!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
