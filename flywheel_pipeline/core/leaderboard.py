"""The model leaderboard from per-model sufficient statistics: rates with Wilson intervals, the
weighted score's lift against a baseline with its Welch interval, and ranks behind a minimum
sample gate. Pure: warehouse/leaderboard.py reads the rows."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel_pipeline.core.stats.frequentist import welch_diff, wilson_interval
from flywheel_pipeline.core.stats.sufficient import ArmStats


@dataclass(frozen=True)
class ModelOutcomes:
    """One model's mature messages in one scope (all organizations, or one)."""
    organization_id: str | None
    model: str
    leads: int
    messages: int
    replies: int
    meetings: int
    deals: int
    revenue: float
    score_sum: float  # of the weighted score per message
    score_sum_squares: float


def board(rows: list[ModelOutcomes], baseline_model: str, min_messages: int) -> tuple[list[dict], list[dict]]:
    """Every model's entry and the ranked ones (at least ``min_messages``, best weighted score first).

    Rates are per mature message: models reach leads with different numbers of messages outside
    an experiment, so per-lead rates would reward the model that wrote more often (the A/B
    analysis is where the lead is the unit)."""
    score = {r.model: ArmStats(r.messages, r.score_sum, r.score_sum_squares) for r in rows}
    base = score.get(baseline_model)
    entries = []
    for r in rows:
        s = score[r.model]
        lift = (welch_diff(s, base) if base is not None and r.model != baseline_model and base.n > 1 and s.n > 1
                else None)
        entries.append({
            "model": r.model, "leads": r.leads, "messages": r.messages,
            "reply": r.replies / r.messages, "reply_ci": wilson_interval(r.replies, r.messages),
            "meeting": r.meetings / r.messages, "meeting_ci": wilson_interval(r.meetings, r.messages),
            "close": r.deals / r.messages, "close_ci": wilson_interval(r.deals, r.messages),
            "revenue": r.revenue, "score": s.mean,
            "lift": lift.estimate if lift else None, "lift_ci": (lift.ci_low, lift.ci_high) if lift else None,
            "ranked": r.messages >= min_messages})
    ranked = sorted((e for e in entries if e["ranked"]), key=lambda e: -e["score"])
    for rank, e in enumerate(ranked, 1):
        e["rank"] = rank
    return entries, ranked


def weekly_trend(values: list[float]) -> float:
    """Least-squares slope of a weekly series (per week); 0 with fewer than two weeks."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return (sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
            / sum((i - mean_x) ** 2 for i in range(n)))
