"""Fixed-horizon inference: Welch tests of absolute and relative lift (delta method, Welch t
with Satterthwaite degrees of freedom, as GrowthBook's gbstats), ratio metrics (delta method),
the test of no difference with the variance pooled under that null, Wilson intervals and
Fisher's exact test."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import special, stats

from flywheel_pipeline.core.stats.sufficient import ArmStats

ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class Moments:
    """What a test needs of one arm: its size, the (possibly CUPED-adjusted) mean and variance
    of one lead's value, and the unadjusted mean (the denominator of a relative effect)."""
    n: int
    mean: float
    var: float
    raw_mean: float

    @classmethod
    def of(cls, arm: ArmStats) -> "Moments":
        return cls(arm.n, arm.mean, arm.var, arm.mean)


@dataclass(frozen=True)
class Estimate:
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float | None = None


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")


def check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def effect_and_variance(t: Moments, c: Moments, relative: bool) -> tuple[float, float]:
    """The effect of treatment over control and its variance (gbstats' frequentist_diff and
    frequentist_variance): absolute, or relative to the control's unadjusted mean by the delta
    method. Refuses what has no honest answer."""
    if t.n < 2 or c.n < 2:
        raise ValueError(f"each arm needs at least 2 leads (have {t.n} and {c.n})")
    if t.var == 0 and c.var == 0:
        raise ValueError("both arms have zero variance: every lead has the same value, so no interval exists")
    if not relative:
        return t.mean - c.mean, t.var / t.n + c.var / c.n
    if c.raw_mean == 0:
        raise ValueError("relative lift is undefined when the control mean is 0")
    if c.raw_mean < 0:
        raise ValueError("relative lift needs a positive control mean (it is negative)")
    mc = c.raw_mean
    return (t.mean - c.mean) / mc, t.var / (mc ** 2 * t.n) + c.var * t.raw_mean ** 2 / (mc ** 4 * c.n)


def satterthwaite_df(t: Moments, c: Moments) -> float:
    """Welch-Satterthwaite degrees of freedom of the absolute difference (gbstats uses them for
    relative effects too)."""
    vt, vc = t.var / t.n, c.var / c.n
    return (vt + vc) ** 2 / (vt ** 2 / (t.n - 1) + vc ** 2 / (c.n - 1))


def p_and_ci(estimate: float, se: float, alpha: float, alternative: str, df: float | None) -> Estimate:
    check_alpha(alpha)
    check_alternative(alternative)
    if not se > 0:
        raise ValueError("the standard error is 0: no interval exists")
    # scipy.special's distribution functions: the same values as scipy.stats.t / norm, without
    # building a distribution object per call (decide() runs them for every metric and arm)
    if df is not None and math.isfinite(df):
        cdf, ppf = (lambda x: special.stdtr(df, x)), (lambda q: special.stdtrit(df, q))
    else:
        cdf, ppf = special.ndtr, special.ndtri
    z = estimate / se
    if alternative == "two-sided":
        p = 2 * cdf(-abs(z))
        q = ppf(1 - alpha / 2)
        low, high = estimate - q * se, estimate + q * se
    elif alternative == "greater":
        p = cdf(-z)
        low, high = estimate - ppf(1 - alpha) * se, math.inf
    else:  # gbstats 0.8.0 reports [-inf, estimate - width] here; the upper bound is estimate + width
        p = cdf(z)
        low, high = -math.inf, estimate + ppf(1 - alpha) * se
    return Estimate(estimate, se, float(low), float(high), float(p), df)


def welch_test(t: Moments, c: Moments, *, alpha: float, alternative: str, relative: bool) -> Estimate:
    estimate, variance = effect_and_variance(t, c, relative)
    return p_and_ci(estimate, math.sqrt(variance), alpha, alternative, satterthwaite_df(t, c))


def welch_diff(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
               alternative: str = "two-sided") -> Estimate:
    """Absolute lift mean(treatment) - mean(control): Welch's t with Satterthwaite df."""
    return welch_test(Moments.of(treatment), Moments.of(control), alpha=alpha, alternative=alternative,
                      relative=False)


def relative_lift(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
                  alternative: str = "two-sided") -> Estimate:
    """mean(treatment) / mean(control) - 1: delta-method variance, Welch t with Satterthwaite df."""
    return welch_test(Moments.of(treatment), Moments.of(control), alpha=alpha, alternative=alternative,
                      relative=True)


def null_pooled_z(treatment: Moments, control: Moments, pooled_var: float) -> float:
    """z of the difference in means with the variance of one lead estimated from both arms
    together, as the null hypothesis of no difference says they are one population.

    At a 10/90 split with rare outcomes the small arm often has no meeting or deal yet, and its
    own (Welch) variance collapses; the pooled variance does not. 0 when nothing varies."""
    se = math.sqrt(pooled_var * (1 / treatment.n + 1 / control.n))
    return (treatment.mean - control.mean) / se if se > 0 else 0.0


def ratio_mean_and_var(arm: ArmStats) -> tuple[float, float]:
    """Ratio metric sum(y)/sum(x) and its delta-method variance (units are leads)."""
    if not arm.has_x:
        raise ValueError("a ratio metric needs sum_x, sum_x2 and sum_xy")
    if arm.n < 2:
        raise ValueError("a ratio metric needs at least 2 leads")
    if not arm.sum_x:
        raise ValueError("a ratio metric is undefined while its denominator is 0")
    mx = arm.mean_x
    ratio = arm.sum_y / arm.sum_x
    var = (arm.var - 2 * ratio * arm.cov_xy + ratio * ratio * arm.var_x) / (arm.n * mx * mx)
    return ratio, max(0.0, var)


def ratio_diff(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05,
               alternative: str = "two-sided") -> Estimate:
    ra, va = ratio_mean_and_var(treatment)
    rb, vb = ratio_mean_and_var(control)
    return p_and_ci(ra - rb, math.sqrt(va + vb), alpha, alternative, None)


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
    """p-value of Fisher's exact test on the 2x2 table (treatment/control x success/failure);
    ``greater``: the treatment's rate is higher."""
    table = [[successes_t, n_t - successes_t], [successes_c, n_c - successes_c]]
    return float(stats.fisher_exact(table, alternative=alternative).pvalue)


def needs_exact_test(successes_t: int, n_t: int, successes_c: int, n_c: int, minimum: int = 5) -> bool:
    """Use Fisher's exact test when any expected cell count is below ``minimum``."""
    total, successes = n_t + n_c, successes_t + successes_c
    if total == 0:
        return True
    expected = [n * s / total for n in (n_t, n_c) for s in (successes, total - successes)]
    return min(expected) < minimum
