"""Power, minimum detectable effects and sample sizes, fixed-horizon and sequential.

Every function works on the moments of one lead's value (mean and variance), so the same code
serves means (the weighted score), proportions (``var = p (1 - p)``) and ratio metrics (the
per-lead variance of the ratio's delta-method linearisation, ``ratio_unit_moments``). ``n`` is
the number of leads in the step, all arms; ``share`` the treatment's share of them, the
control (``champion``) has ``control_share`` (default: the rest).

Sequential power is the chance that the always-valid test rejects *at* N (crossing earlier
only adds to it), a lower bound that is tight where the boundary is tightest, at N*.
"""

from __future__ import annotations

import math

from scipy import special

from flywheel_pipeline.core.stats.frequentist import check_alpha, ratio_mean_and_var
from flywheel_pipeline.core.stats.sequential import rho_squared
from flywheel_pipeline.core.stats.sufficient import ArmStats


def critical_z(alpha: float, *, one_sided: bool = True, sequential: bool = False, n: float = 0.0,
               n_star: float | None = None) -> float:
    """The |z| a test at level alpha needs: normal quantile, or the confidence sequence's
    boundary after n units (one side at alpha = the two-sided sequence at 2 alpha / (1 + alpha))."""
    check_alpha(alpha)
    if not sequential:
        return float(special.ndtri(1 - alpha if one_sided else 1 - alpha / 2))
    level = 2 * alpha / (1 + alpha) if one_sided else alpha
    if n <= 0:
        return math.inf
    r2 = rho_squared(n_star or n, level)
    return math.sqrt(2 * (n * r2 + 1) / (n * r2) * math.log(math.sqrt(n * r2 + 1) / level))


def _se(var: float, n: float, share: float, control_share: float | None) -> float:
    c = 1 - share if control_share is None else control_share
    if not 0 < share < 1 or not 0 < c <= 1 - share + 1e-12:
        raise ValueError(f"shares must be in (0, 1) and add up to at most 1, got {share} and {c}")
    if var < 0 or n <= 0:
        raise ValueError("the variance must be non-negative and n positive")
    return math.sqrt(var * (1 / (n * share) + 1 / (n * c)))


def power(*, mean: float, var: float, n: float, share: float, lift: float, alpha: float = 0.05,
          relative: bool = True, one_sided: bool = True, sequential: bool = False, n_star: float | None = None,
          control_share: float | None = None) -> float:
    """Chance of detecting ``lift`` (relative to ``mean``, or absolute) with n leads."""
    effect = abs(mean * lift if relative else lift)
    se = _se(var, n, share, control_share)
    if se == 0:
        return 1.0 if effect > 0 else 0.0
    crit = critical_z(alpha, one_sided=one_sided, sequential=sequential, n=n, n_star=n_star)
    return float(special.ndtr(effect / se - crit))


def minimum_detectable_lift(*, mean: float, var: float, n: float, share: float, alpha: float = 0.05,
                            target_power: float = 0.8, relative: bool = True, one_sided: bool = True,
                            sequential: bool = False, n_star: float | None = None,
                            control_share: float | None = None) -> float:
    """The smallest lift detected with ``target_power`` (relative to ``mean`` or absolute)."""
    if not 0 < target_power < 1:
        raise ValueError("target_power must be between 0 and 1")
    crit = critical_z(alpha, one_sided=one_sided, sequential=sequential, n=n, n_star=n_star)
    effect = (crit + special.ndtri(target_power)) * _se(var, n, share, control_share)
    if not relative:
        return float(effect)
    if mean <= 0:
        raise ValueError("a relative lift needs a positive baseline mean")
    return float(effect / mean)


def leads_needed(*, mean: float, var: float, share: float, lift: float, alpha: float = 0.05,
                 target_power: float = 0.8, relative: bool = True, one_sided: bool = True,
                 sequential: bool = False, n_star: float | None = None,
                 control_share: float | None = None) -> int:
    """Leads (all arms) for ``target_power`` at ``lift``; sequential: the smallest n at which the
    always-valid test tuned for ``n_star`` (default: that n) reaches it."""
    effect = abs(mean * lift if relative else lift)
    if effect == 0:
        raise ValueError("a lift of 0 cannot be detected")
    if not sequential:
        z = critical_z(alpha, one_sided=one_sided) + special.ndtri(target_power)
        unit = _se(var, 1, share, control_share)
        return math.ceil((z * unit / effect) ** 2)
    low, high = 2, 2
    while power(mean=mean, var=var, n=high, share=share, lift=lift, alpha=alpha, relative=relative,
                one_sided=one_sided, sequential=True, n_star=n_star, control_share=control_share) < target_power:
        low, high = high, high * 2
        if high > 1e12:
            raise ValueError("the lift is too small to detect with any sample")
    while high - low > 1:
        mid = (low + high) // 2
        if power(mean=mean, var=var, n=mid, share=share, lift=lift, alpha=alpha, relative=relative,
                 one_sided=one_sided, sequential=True, n_star=n_star, control_share=control_share) < target_power:
            low = mid
        else:
            high = mid
    return high


def proportion_moments(rate: float) -> tuple[float, float]:
    if not 0 < rate < 1:
        raise ValueError("a rate must be in (0, 1)")
    return rate, rate * (1 - rate)


def ratio_unit_moments(arm: ArmStats) -> tuple[float, float]:
    """A ratio metric's value and the per-lead variance of its delta-method linearisation."""
    ratio, var = ratio_mean_and_var(arm)
    return ratio, var * arm.n


def cohens_h(p1: float, p2: float) -> float:
    return 2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1))


def leads_per_arm(baseline: float, lift: float, *, alpha: float = 0.05, power: float = 0.8,
                  relative: bool = True) -> int:
    """Leads per arm to detect ``lift`` on a rate (two-sided, equal arms; arcsine/Cohen's h
    normal approximation, as statsmodels' NormalIndPower)."""
    target = baseline * (1 + lift) if relative else baseline + lift
    if not 0 < baseline < 1 or not 0 < target < 1:
        raise ValueError("rates must be in (0, 1)")
    h = abs(cohens_h(baseline, target))
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    return math.ceil((z / h) ** 2 * 2)  # n per arm for two equal independent samples


def minimum_detectable_effect(baseline: float, n_per_arm: int, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest absolute rate difference detectable with ``n_per_arm`` leads in each arm
    (two-sided, arcsine approximation)."""
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    h = z * math.sqrt(2 / n_per_arm)
    target = math.sin(math.asin(math.sqrt(baseline)) + h / 2) ** 2
    return target - baseline
