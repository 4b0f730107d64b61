"""Always-valid inference for experiments looked at every day.

Asymptotic confidence sequences (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", 2023): with
``t`` units observed, an estimated standard deviation ``sigma`` of one unit's contribution and
a tuning constant ``rho``, the interval ``estimate ± sigma * sqrt(2 (t rho² + 1) / (t² rho²)
* log(sqrt(t rho² + 1) / alpha))`` covers the true effect at every t simultaneously with
probability ≥ 1 - alpha (asymptotically). ``rho`` is chosen so the boundary is tightest at
``t = N*``, the expected sample size: ``rho² = (-2 log alpha + log(-2 log alpha + 1)) / N*``.
For a difference in means the unit variance is ``t * (var_t / n_t + var_c / n_c)`` with
``t = n_t + n_c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flywheel_pipeline.core.stats.sufficient import ArmStats


def rho_squared(n_star: float, alpha: float) -> float:
    if n_star <= 0:
        raise ValueError("N* (the expected sample size) must be positive")
    la = -2 * math.log(alpha)
    return (la + math.log(la + 1)) / n_star


def cs_radius(t: int, sigma: float, alpha: float, n_star: float) -> float:
    """Half-width of the asymptotic confidence sequence for a mean after t units."""
    if t <= 0:
        return math.inf
    r2 = rho_squared(n_star, alpha)
    return sigma * math.sqrt(2 * (t * r2 + 1) / (t * t * r2) * math.log(math.sqrt(t * r2 + 1) / alpha))


@dataclass(frozen=True)
class SequentialEstimate:
    estimate: float
    ci_low: float
    ci_high: float
    excludes_zero: bool


def sequential_diff(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
                    n_star: float = 10_000) -> SequentialEstimate:
    """Always-valid interval for mean(treatment) - mean(control)."""
    t = treatment.n + control.n
    if treatment.n < 2 or control.n < 2:
        return SequentialEstimate(treatment.mean - control.mean, -math.inf, math.inf, False)
    sigma = math.sqrt(t * (treatment.var / treatment.n + control.var / control.n))
    diff = treatment.mean - control.mean
    r = cs_radius(t, sigma, alpha, n_star)
    return SequentialEstimate(diff, diff - r, diff + r, diff - r > 0 or diff + r < 0)
