"""Deterministic traffic split: a lead's arm follows from a hash of the lead id and the
experiment id, so a lead stays in its arm for the whole experiment, and raising a
challenger's share (10% -> 50% -> 100%, or 10% -> 33% beside another challenger) keeps every
lead already in that challenger's arm there (a challenger owns the lowest buckets of its slot;
raising its share only adds buckets)."""

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
    """Each challenger owns a slot of the buckets and takes the lowest ones of it; the champion
    takes the rest. One challenger: its slot is every bucket ([0, share)). K arms with several
    challengers: challenger k (in list order) owns [k * 100/K, (k + 1) * 100/K), so each can grow
    to an equal split (80/10/10 -> 34/33/33) keeping every lead it already has."""
    if not arms:
        raise ValueError("no arms to choose from")
    challengers = [a for a in arms if a.ab_group != "champion"]
    width = 100.0 / len(arms) if len(challengers) > 1 else 100.0
    b = bucket(lead_id, experiment_id)
    for k, arm in enumerate(challengers):
        if arm.traffic_pct > width + 1e-9:
            raise ValueError(f"{arm.ab_group} has {arm.traffic_pct:g}% of traffic; with {len(arms)} arms a "
                             f"challenger can have at most {width:g}%")
        if k * width <= b < k * width + arm.traffic_pct:
            return arm
    champions = [a for a in arms if a.ab_group == "champion"]
    return champions[0] if champions else arms[-1]


def allocation_id(experiment_id: str, arms: list[Arm]) -> str:
    """Names one allocation of an experiment (its arms and their shares), e.g. ``3f2a…@challenger=10/champion=90``.

    The outreach app records it with every routed message (``metadata.allocation``): a rollout
    step changes the shares, and leads then move between arms (the challenger gains buckets),
    so an analysis compares arms within one allocation, where the split is what it was
    configured to be and the sample-ratio check is meaningful."""
    shares = "/".join(f"{a.ab_group}={a.traffic_pct:g}" for a in sorted(arms, key=lambda a: a.ab_group))
    return f"{experiment_id}@{shares}"


def next_rollout_step(current_pct: float, steps: tuple[float, ...] = DEFAULT_ROLLOUT_STEPS) -> float:
    """The next share for the challenger after a healthy period (stays at the last step)."""
    for step in steps:
        if step > current_pct + 1e-9:
            return step
    return steps[-1]
