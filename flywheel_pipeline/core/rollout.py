"""Which model is a family's challenger when the routing table is rebuilt (pure: the registry's
rows in, the choice out; warehouse/routing_table.py applies it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Challenger:
    model_id: str
    version: str | None
    traffic_pct: float


@dataclass(frozen=True)
class ChallengerChoice:
    challenger: Challenger | None
    # what changed: 'keep' (no newer model, or none passed), 'start' (a new challenger at the first
    # step), 'replace' (a newer model replaces one still at the first step), 'wait' (a newer model
    # waits: the current challenger is mid-rollout)
    action: Literal["keep", "start", "replace", "wait"]
    replaced: str | None = None  # the archived challenger of 'replace'
    waiting: str | None = None  # the model that waits


def choose_challenger(current: Challenger | None, newest_ready: tuple[str, str] | None, passed: set[str],
                      first_step_pct: float) -> ChallengerChoice:
    """``current``: the ready challenger with its traffic; ``newest_ready``: (model, version) of the
    newest ready model; ``passed``: models that passed offline evaluation.

    A newer model that passed replaces a challenger still at the first step (its experiment, and
    so the lead split, starts afresh at the first step); a challenger that has already earned a
    rollout step finishes its experiment first and the newer model waits for the next cycle."""
    newer = (newest_ready is not None and newest_ready[0] in passed
             and (current is None or current.model_id != newest_ready[0]))
    if not newer:
        return ChallengerChoice(current, "keep")
    if current is not None and current.traffic_pct > first_step_pct:
        return ChallengerChoice(current, "wait", waiting=newest_ready[0])
    challenger = Challenger(newest_ready[0], newest_ready[1], first_step_pct)
    if current is None:
        return ChallengerChoice(challenger, "start")
    return ChallengerChoice(challenger, "replace", replaced=current.model_id)
