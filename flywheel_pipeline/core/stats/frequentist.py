"""Fixed-horizon inference: Welch tests of absolute and relative lift (delta method), ratio
metrics (delta method), Wilson intervals, Fisher's exact test for rare outcomes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from flywheel_pipeline.core.stats.sufficient import ArmStats

ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class Estimate:
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float | None = None


def _p_and_ci(estimate: float, se: float, alpha: float, alternative: str, df: float | None) -> Estimate:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}")
    dist = stats.t(df) if df is not None and math.isfinite(df) else stats.norm()
    if se <= 0:
        p = 1.0 if estimate == 0 else 0.0
        return Estimate(estimate, 0.0, estimate, estimate, p, df)
    z = estimate / se
    if alternative == "two-sided":
        p = 2 * dist.sf(abs(z))
        q = dist.ppf(1 - alpha / 2)
        low, high = estimate - q * se, estimate + q * se
    elif alternative == "greater":
        p = dist.sf(z)
        low, high = estimate - dist.ppf(1 - alpha) * se, math.inf
    else:
        p = dist.cdf(z)
        low, high = -math.inf, estimate + dist.ppf(1 - alpha) * se
    return Estimate(estimate, se, low, high, float(p), df)


def welch_diff(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
               alternative: str = "two-sided") -> Estimate:
    """Absolute lift mean(treatment) - mean(control), Welch's t with Satterthwaite df."""
    va, vb = treatment.var / treatment.n, control.var / control.n
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2) / (treatment.n - 1) + (vb ** 2) / (control.n - 1)) if va + vb > 0 else None
    return _p_and_ci(treatment.mean - control.mean, se, alpha, alternative, df)


def relative_lift(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
                  alternative: str = "two-sided") -> Estimate:
    """mean(treatment) / mean(control) - 1 with a delta-method standard error (normal)."""
    ma, mb = treatment.mean, control.mean
    if mb == 0:
        raise ValueError("relative lift is undefined when the control mean is 0")
    va, vb = treatment.var / treatment.n, control.var / control.n
    se = math.sqrt(va / mb ** 2 + ma ** 2 * vb / mb ** 4)
    return _p_and_ci(ma / mb - 1, se, alpha, alternative, None)


def ratio_mean_and_var(arm: ArmStats) -> tuple[float, float]:
    """Ratio metric sum(y)/sum(x) and its delta-method variance (units are leads)."""
    if arm.sum_x is None or arm.sum_x2 is None or arm.sum_xy is None:
        raise ValueError("a ratio metric needs sum_x, sum_x2 and sum_xy")
    n = arm.n
    my, mx = arm.sum_y / n, arm.sum_x / n
    vy = (arm.sum_y2 - n * my * my) / (n - 1)
    vx = (arm.sum_x2 - n * mx * mx) / (n - 1)
    cxy = (arm.sum_xy - n * my * mx) / (n - 1)
    ratio = my / mx
    var = (vy - 2 * ratio * cxy + ratio * ratio * vx) / (n * mx * mx)
    return ratio, max(0.0, var)


def ratio_diff(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
               alternative: str = "two-sided") -> Estimate:
    ra, va = ratio_mean_and_var(treatment)
    rb, vb = ratio_mean_and_var(control)
    return _p_and_ci(ra - rb, math.sqrt(va + vb), alpha, alternative, None)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_exact(successes_t: int, n_t: int, successes_c: int, n_c: int,
                 alternative: str = "two-sided") -> float:
    """p-value of Fisher's exact test on the 2x2 table (treatment/control x success/failure)."""
    table = [[successes_t, n_t - successes_t], [successes_c, n_c - successes_c]]
    return float(stats.fisher_exact(table, alternative=alternative).pvalue)


def needs_exact_test(successes_t: int, n_t: int, successes_c: int, n_c: int, minimum: int = 5) -> bool:
    """Use Fisher's exact test when any expected cell count is below ``minimum``."""
    total, successes = n_t + n_c, successes_t + successes_c
    if total == 0:
        return True
    expected = [n * s / total for n in (n_t, n_c) for s in (successes, total - successes)]
    return min(expected) < minimum
