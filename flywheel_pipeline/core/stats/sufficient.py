"""Sufficient statistics of one arm, as SQL aggregates them per lead.

For a per-lead metric y: ``n`` (leads), ``sum_y``, ``sum_y2``. A second per-lead quantity x
adds ``sum_x``, ``sum_x2`` and ``sum_xy``; what x is depends on the metric: the denominator of
a ratio metric (revenue per message: y = revenue of a lead, x = messages to the lead), or a
pre-experiment covariate for CUPED (y = the lead's weighted score, x = its engagement before
it was assigned to an arm).

Variances use the n - 1 denominator throughout, for proportions too (gbstats'
``ProportionStatistic`` uses p(1 - p); see docs/experiments.md).
"""

from __future__ import annotations

import math
import numbers
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
        if isinstance(self.n, bool) or not isinstance(self.n, numbers.Integral) or self.n < 0:
            raise ValueError(f"n must be a non-negative integer, got {self.n!r}")
        for name in ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if self.sum_y2 < 0 or (self.sum_x2 is not None and self.sum_x2 < 0):
            raise ValueError("sums of squares cannot be negative")
        given = [v is not None for v in (self.sum_x, self.sum_x2, self.sum_xy)]
        if any(given) and not all(given):
            raise ValueError("sum_x, sum_x2 and sum_xy come together")

    @property
    def has_x(self) -> bool:
        return self.sum_x is not None

    @property
    def mean(self) -> float:
        return self.sum_y / self.n if self.n else 0.0

    @property
    def mean_x(self) -> float:
        return (self.sum_x or 0.0) / self.n if self.n else 0.0

    @property
    def var(self) -> float:
        """Unbiased sample variance of y (0 for n < 2)."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.sum_y2 - self.sum_y ** 2 / self.n) / (self.n - 1))

    @property
    def var_x(self) -> float:
        if self.n < 2 or self.sum_x is None:
            return 0.0
        return max(0.0, (self.sum_x2 - self.sum_x ** 2 / self.n) / (self.n - 1))

    @property
    def cov_xy(self) -> float:
        if self.n < 2 or self.sum_x is None:
            return 0.0
        return (self.sum_xy - self.sum_x * self.sum_y / self.n) / (self.n - 1)

    def __add__(self, other: "ArmStats") -> "ArmStats":
        """The two arms as one sample (what the null hypothesis of no difference says they are)."""
        both = self.has_x and other.has_x
        return ArmStats(self.n + other.n, self.sum_y + other.sum_y, self.sum_y2 + other.sum_y2,
                        *((self.sum_x + other.sum_x, self.sum_x2 + other.sum_x2, self.sum_xy + other.sum_xy)
                          if both else (None, None, None)))

    def without_x(self) -> "ArmStats":
        return ArmStats(self.n, self.sum_y, self.sum_y2)

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
