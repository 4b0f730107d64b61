"""Deterministic traffic split: a lead's arm follows from a hash of the lead id and the
experiment id, so a lead stays in its arm for the whole experiment, and raising the
challenger's share (10% -> 50% -> 100%) keeps every lead already in the challenger arm there
(the challenger owns the lowest buckets; raising its share only adds buckets)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DEFAULT_ROLLOUT_STEPS = (10.0, 50.0, 100.0)


def bucket(lead_id: str, experiment_id: str) -> float:
    """A stable number in [0, 100) for this lead in this experiment."""
    digest = hashlib.sha256(f"{experiment_id}:{lead_id}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15 * 100


@dataclass(frozen=True)
class Arm:
    model_id: str
    version: str | None
    ab_group: str  # "challenger" or "champion"
    traffic_pct: float


def choose_arm(lead_id: str, experiment_id: str, arms: list[Arm]) -> Arm:
    """Challenger arms take the lowest buckets in list order; the champion takes the rest."""
    if not arms:
        raise ValueError("no arms to choose from")
    b = bucket(lead_id, experiment_id)
    edge = 0.0
    for arm in arms:
        if arm.ab_group == "champion":
            continue
        edge += arm.traffic_pct
        if b < edge:
            return arm
    champions = [a for a in arms if a.ab_group == "champion"]
    return champions[0] if champions else arms[-1]


def next_rollout_step(current_pct: float, steps: tuple[float, ...] = DEFAULT_ROLLOUT_STEPS) -> float:
    """The next share for the challenger after a healthy period (stays at the last step)."""
    for step in steps:
        if step > current_pct + 1e-9:
            return step
    return steps[-1]
