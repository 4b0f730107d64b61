"""Always-valid inference for experiments looked at every day.

Asymptotic confidence sequences (Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", 2023; eq. 9 and 161
as GrowthBook's gbstats implements them): with ``N`` units observed and ``V`` the variance of
the effect's estimate, the interval ``estimate ± sqrt(V N) * sqrt(2 (N rho² + 1) / (N rho)² *
log(sqrt(N rho² + 1) / alpha))`` covers the true effect at every N simultaneously with
probability ≥ 1 - alpha (asymptotically). ``rho`` makes the boundary tightest at ``N*``, the
planned sample: ``rho² = (-2 log alpha + log(-2 log alpha + 1)) / N*``.

The always-valid p-value (eq. 155) is the reciprocal of the normal-mixture e-value
``exp(rho² S / (2 (N rho² + 1))) / sqrt(N rho² + 1)`` with ``S = estimate² N / V``: the chance
that it *ever* falls below a under no effect is at most a (Ville's inequality).

One side: the two-sided mixture is the mean of a mixture over positive effects and one over
negative ones, each a martingale starting at 1; on the side the estimate is on, the other one
is at most 1, so the one-sided e-value is at least ``2 / p - 1`` and ``p / (2 - p)`` is an
always-valid one-sided p-value (docs/experiments.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flywheel_pipeline.core.stats.frequentist import Moments, check_alpha, effect_and_variance
from flywheel_pipeline.core.stats.sufficient import ArmStats


# N*, the planned sample of a sequence of looks, when nothing better is known (the policy
# plans each rollout step from the champion's baseline instead; core/stats/policy.py).
DEFAULT_PLANNED_LEADS = 10_000


def rho_squared(n_star: float, alpha: float) -> float:
    if not n_star > 0:
        raise ValueError(f"N* (the planned sample) must be positive, got {n_star!r}")
    check_alpha(alpha)
    la = -2 * math.log(alpha)
    return (la + math.log(la + 1)) / n_star


def cs_radius(t: int, sigma: float, alpha: float, n_star: float) -> float:
    """Half-width of the asymptotic confidence sequence for a mean after t units."""
    if t <= 0:
        return math.inf
    r2 = rho_squared(n_star, alpha)
    return sigma * math.sqrt(2 * (t * r2 + 1) / (t * t * r2) * math.log(math.sqrt(t * r2 + 1) / alpha))


def always_valid_p(z: float, t: int, alpha: float, n_star: float) -> float:
    """Two-sided always-valid p-value of a z statistic after t units (rho tuned for alpha at N*)."""
    if t <= 0:
        return 1.0
    r2 = rho_squared(n_star, alpha)
    tr2p1 = t * r2 + 1
    log_e = r2 * z * z * t / (2 * tr2p1) - 0.5 * math.log(tr2p1)
    return 1.0 if log_e <= 0 else math.exp(-log_e)


def one_sided(p_two_sided: float, on_side: bool) -> float:
    """The always-valid one-sided p-value from the two-sided one (see the module docstring)."""
    return p_two_sided / (2 - p_two_sided) if on_side else 1.0


@dataclass(frozen=True)
class SequentialEstimate:
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def sequential_test(t: Moments, c: Moments, *, alpha: float, n_star: float, relative: bool) -> SequentialEstimate:
    estimate, variance = effect_and_variance(t, c, relative)
    n = t.n + c.n
    radius = cs_radius(n, math.sqrt(variance * n), alpha, n_star)
    p = always_valid_p(estimate / math.sqrt(variance), n, alpha, n_star)
    return SequentialEstimate(estimate, estimate - radius, estimate + radius, p)


def sequential_diff(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05, n_star: float = DEFAULT_PLANNED_LEADS,
                    relative: bool = False) -> SequentialEstimate:
    """Always-valid interval and p-value for mean(treatment) - mean(control), or for the relative
    effect mean(treatment) / mean(control) - 1 with ``relative=True``."""
    return sequential_test(Moments.of(treatment), Moments.of(control), alpha=alpha, n_star=n_star,
                           relative=relative)
