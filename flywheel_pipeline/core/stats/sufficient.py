"""Sufficient statistics of one arm, as SQL aggregates them per lead.

For a per-lead metric y: ``n`` (leads), ``sum_y``, ``sum_y2``. For a ratio metric y/x
(revenue per message: y = revenue of a lead, x = messages to the lead) also ``sum_x``,
``sum_x2`` and ``sum_xy``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArmStats:
    n: int
    sum_y: float
    sum_y2: float
    sum_x: float | None = None
    sum_x2: float | None = None
    sum_xy: float | None = None

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be non-negative")

    @property
    def mean(self) -> float:
        return self.sum_y / self.n if self.n else 0.0

    @property
    def var(self) -> float:
        """Unbiased sample variance of y (0 for n < 2)."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_y2 - self.sum_y ** 2 / self.n) / (self.n - 1))

    @classmethod
    def from_values(cls, y, x=None) -> "ArmStats":
        y = [float(v) for v in y]
        if x is None:
            return cls(len(y), sum(y), sum(v * v for v in y))
        x = [float(v) for v in x]
        return cls(len(y), sum(y), sum(v * v for v in y), sum(x), sum(v * v for v in x),
                   sum(a * b for a, b in zip(y, x, strict=True)))

    @classmethod
    def proportion(cls, n: int, successes: int) -> "ArmStats":
        """A 0/1 metric per lead: sum of squares equals the sum."""
        if not 0 <= successes <= n:
            raise ValueError("successes must be between 0 and n")
        return cls(n, float(successes), float(successes))
