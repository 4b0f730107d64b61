"""CUPED (regression adjustment, Deng, Xu, Kohavi and Walker 2013), as gbstats computes it.

Each lead carries y (its outcome in the experiment) and x (a covariate measured before it was
assigned, so the treatment cannot have moved it). With ``theta = cov(x, y) / var(x)`` over both
arms together, ``y - theta x`` has the same expected difference between arms as y (x has the
same distribution in every arm, by randomization) and a variance smaller by the share of y's
variance that x explains (``1 - corr(x, y)²``). Relative effects divide by the control's
unadjusted mean.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel_pipeline.core.stats.frequentist import Estimate, Moments, welch_test
from flywheel_pipeline.core.stats.sufficient import ArmStats


def theta(*arms: ArmStats) -> float:
    """cov(x, y) / var(x) over all arms together (0 when x or y does not vary)."""
    joint = sum(arms[1:], arms[0])
    if not joint.has_x:
        raise ValueError("CUPED needs the covariate sums (sum_x, sum_x2, sum_xy) in every arm")
    if joint.var_x == 0 or joint.var == 0:
        return 0.0
    return joint.cov_xy / joint.var_x


def adjusted(arm: ArmStats, theta_: float) -> Moments:
    """One arm's moments of y - theta (x - 0): adjusted mean, residual variance, raw mean."""
    if not arm.has_x:
        raise ValueError("CUPED needs the covariate sums (sum_x, sum_x2, sum_xy) in every arm")
    var = arm.var + theta_ ** 2 * arm.var_x - 2 * theta_ * arm.cov_xy
    return Moments(arm.n, arm.mean - theta_ * arm.mean_x, max(0.0, var), arm.mean)


@dataclass(frozen=True)
class AdjustedEstimate(Estimate):
    theta: float = 0.0
    variance_reduction: float = 0.0  # 1 - var(adjusted estimate) / var(unadjusted estimate)


def regression_adjusted(treatment: ArmStats, control: ArmStats, *, alpha: float = 0.05, relative: bool = False,
                        alternative: str = "two-sided") -> AdjustedEstimate:
    """The CUPED-adjusted effect (absolute, or relative with ``relative=True``) with a Welch t
    interval (Satterthwaite df of the adjusted variances), and how much variance it removed."""
    th = theta(treatment, control)
    t, c = adjusted(treatment, th), adjusted(control, th)
    est = welch_test(t, c, alpha=alpha, alternative=alternative, relative=relative)
    plain = welch_test(Moments.of(treatment), Moments.of(control), alpha=alpha, alternative=alternative,
                       relative=relative)
    return AdjustedEstimate(est.estimate, est.se, est.ci_low, est.ci_high, est.p_value, est.df, th,
                            1 - (est.se / plain.se) ** 2)
