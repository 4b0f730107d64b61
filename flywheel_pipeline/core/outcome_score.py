"""The weighted outcome score: the one number experiments test, the leaderboard ranks and
velocity trends. A lead's (or message's) deepest outcome, weighted; a deal also counts its
meeting and reply, so a closed deal scores 0.5 + 0.3 + 0.2 = 1."""

from __future__ import annotations

SCORE_WEIGHTS: dict[str, float] = {"close": 0.5, "meeting": 0.3, "reply": 0.2}


def weighted_score_sql(close: str, meeting: str, reply: str) -> str:
    """The score as a SQL expression over three 0/1 (or boolean) column expressions."""
    return (f"({SCORE_WEIGHTS['close']!r} * ({close})::INT + {SCORE_WEIGHTS['meeting']!r} * ({meeting})::INT + "
            f"{SCORE_WEIGHTS['reply']!r} * ({reply})::INT)")
