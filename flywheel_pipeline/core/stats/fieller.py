"""Fieller's interval for a ratio of two means from one sample of pairs: cost per reply is
sum(cost) / sum(replied) = mean(cost) / mean(replied) over the same messages.

The delta method's symmetric interval is poor when the denominator is a rare event (a handful of
replies, meetings or deals): it can go below 0 and covers too little. Fieller's set inverts the
test of ``mean(x) - theta * mean(y) = 0``, which is normal without dividing by a noisy mean; when
the denominator is not clearly above 0 the set is unbounded, and the interval says so (``inf``).
Inputs are sufficient statistics, as SQL aggregates them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special

from flywheel_pipeline.core.stats.frequentist import check_alpha


@dataclass(frozen=True)
class RatioInterval:
    estimate: float | None  # None when the denominator is 0
    ci_low: float
    ci_high: float  # math.inf when unbounded

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.ci_high)


def fieller_ratio(n: int, sum_x: float, sum_x2: float, sum_y: float, sum_y2: float, sum_xy: float,
                  alpha: float = 0.05) -> RatioInterval:
    """sum(x)/sum(y) over ``n`` pairs with its (1 - alpha) Fieller interval, for non-negative x
    and y (costs, event counts): an unbounded set is reported as ``[low, inf)`` with ``low`` the
    largest value the data rule out below (0 when none)."""
    check_alpha(alpha)
    if n < 0 or sum_y < 0 or sum_x < 0:
        raise ValueError("n and the sums must be non-negative")
    estimate = sum_x / sum_y if sum_y > 0 else None
    if n < 2:
        return RatioInterval(estimate, 0.0, math.inf)
    mx, my = sum_x / n, sum_y / n
    # variances and covariance of the two means (sample moments, n - 1 denominator)
    vxx = max(0.0, (sum_x2 - sum_x * sum_x / n) / (n - 1)) / n
    vyy = max(0.0, (sum_y2 - sum_y * sum_y / n) / (n - 1)) / n
    vxy = (sum_xy - sum_x * sum_y / n) / (n - 1) / n
    z2 = float(special.ndtri(1 - alpha / 2)) ** 2
    # theta is inside when (mx - theta my)^2 <= z2 (vxx - 2 theta vxy + theta^2 vyy)
    a = my * my - z2 * vyy
    b = -2 * (mx * my - z2 * vxy)
    c = mx * mx - z2 * vxx
    disc = b * b - 4 * a * c
    if a > 0 and disc >= 0:
        root = math.sqrt(disc)
        low, high = (-b - root) / (2 * a), (-b + root) / (2 * a)
        return RatioInterval(estimate, max(0.0, low), max(0.0, high))
    if a <= 0 and disc > 0 and a != 0:
        # the set is two rays; with theta >= 0 what remains is [larger root, inf) (or all of it)
        roots = sorted(((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)))
        return RatioInterval(estimate, max(0.0, roots[1]) if roots[0] < 0 else 0.0, math.inf)
    return RatioInterval(estimate, 0.0, math.inf)
