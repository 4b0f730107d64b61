"""The statistics engine against independent computations (scipy, statsmodels), published
worked examples, and a simulation of daily peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize

from flywheel_pipeline.core.stats.decisions import benjamini_hochberg, gaussian_bayes, holm, sample_ratio_mismatch
from flywheel_pipeline.core.stats.planning import leads_per_arm, minimum_detectable_effect
from flywheel_pipeline.core.stats.frequentist import (fisher_exact, needs_exact_test, ratio_diff, relative_lift,
                                                      welch_diff, wilson_interval)
from flywheel_pipeline.core.stats.sequential import cs_radius, sequential_diff
from flywheel_pipeline.core.stats.sufficient import ArmStats

RNG = np.random.default_rng(20261122)


def test_welch_matches_scipy_from_raw_data_and_sufficient_statistics():
    a, b = RNG.normal(1.1, 2.0, 300), RNG.normal(1.0, 3.0, 450)
    ours = welch_diff(ArmStats.from_values(a), ArmStats.from_values(b))
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.df == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    greater = welch_diff(ArmStats.from_values(a), ArmStats.from_values(b), alternative="greater")
    assert greater.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def test_relative_lift_delta_method_against_simulation():
    control, treatment = ArmStats.proportion(20_000, 2_000), ArmStats.proportion(20_000, 2_300)
    est = relative_lift(treatment, control)
    assert est.estimate == pytest.approx(0.15)
    draws = RNG.binomial(20_000, 0.115, 20_000) / RNG.binomial(20_000, 0.10, 20_000) - 1
    assert est.se == pytest.approx(draws.std(), rel=0.05)


def test_ratio_metric_delta_method_against_bootstrap():
    msgs = RNG.integers(1, 6, 2000)
    revenue = RNG.gamma(0.3, 100, 2000) * msgs
    arm = ArmStats.from_values(revenue, msgs)
    est = ratio_diff(arm, ArmStats.from_values(revenue * 0.9, msgs))
    idx = RNG.integers(0, 2000, (2000, 2000))
    boot = revenue[idx].sum(1) / msgs[idx].sum(1)
    from flywheel_pipeline.core.stats.frequentist import ratio_mean_and_var
    ratio, var = ratio_mean_and_var(arm)
    assert ratio == pytest.approx(revenue.sum() / msgs.sum())
    assert math.sqrt(var) == pytest.approx(boot.std(), rel=0.08)
    assert est.estimate == pytest.approx(ratio * 0.1)


def test_wilson_interval_statsmodels_and_newcombe_worked_example():
    assert wilson_interval(81, 263) == pytest.approx(proportion_confint(81, 263, method="wilson"), rel=1e-9)
    low, high = wilson_interval(81, 263)  # Newcombe (1998), example: 81/263 -> 0.2553 to 0.3662
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_fisher_exact_lady_tasting_tea_and_fallback_rule():
    assert fisher_exact(3, 4, 1, 4, alternative="greater") == pytest.approx(0.24286, abs=1e-5)
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(0.48571, abs=1e-5)
    assert needs_exact_test(2, 1000, 1, 1000) and not needs_exact_test(200, 1000, 150, 1000)


def test_srm_matches_scipy_chisquare_and_flags_a_broken_split():
    res = sample_ratio_mismatch([5100, 4900], [0.5, 0.5])
    ref = stats.chisquare([5100, 4900], [5000, 5000])
    assert (res.chi2, res.p_value) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    assert not res.mismatch
    assert sample_ratio_mismatch([9000, 1300], [0.9, 0.1]).mismatch  # 10% arm got 12.6%


@pytest.mark.parametrize("method, ours", [("holm", holm), ("fdr_bh", benjamini_hochberg)])
def test_multiple_testing_matches_statsmodels(method, ours):
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    reject, adjusted = ours(p, 0.05)
    ref_reject, ref_adjusted, _, _ = multipletests(p, alpha=0.05, method=method)
    assert reject == list(ref_reject)
    assert adjusted == pytest.approx(list(ref_adjusted))


def test_power_and_mde_match_statsmodels():
    n = leads_per_arm(0.10, 0.20)  # 10% -> 12% reply rate
    ref = NormalIndPower().solve_power(effect_size=proportion_effectsize(0.12, 0.10), alpha=0.05, power=0.8)
    assert n == math.ceil(ref)
    mde = minimum_detectable_effect(0.10, n)
    assert mde == pytest.approx(0.02, abs=2e-4)


def test_bayes_chance_to_win_and_expected_loss():
    c, t = ArmStats.proportion(10_000, 1_000), ArmStats.proportion(10_000, 1_080)
    res = gaussian_bayes(t, c)
    se = math.sqrt(0.108 * 0.892 / 9999 + 0.1 * 0.9 / 9999)
    assert res.chance_to_win == pytest.approx(stats.norm.cdf(0.008 / se), rel=1e-6)
    draws = RNG.normal(res.posterior_mean, res.posterior_sd, 400_000)
    assert res.expected_loss == pytest.approx(np.maximum(0, -draws).mean(), rel=0.02)
    shrunk = gaussian_bayes(t, c, prior_sd=0.001)
    assert 0.5 < shrunk.chance_to_win < res.chance_to_win and abs(shrunk.posterior_mean) < 0.008


def test_confidence_sequence_is_wider_than_fixed_horizon_and_shrinks():
    assert cs_radius(1000, 1.0, 0.05, 1000) > 1.96 / math.sqrt(1000)
    assert cs_radius(100_000, 1.0, 0.05, 1000) < cs_radius(1000, 1.0, 0.05, 1000)


def test_daily_peeking_stays_within_alpha_with_sequences_but_not_with_fixed_tests():
    """A/A tests looked at 30 times: the always-valid interval rarely ever excludes zero;
    the fixed-horizon test, peeked at daily, declares far more false winners."""
    alpha, experiments, days, per_day = 0.05, 300, 30, 100
    seq_false, fixed_false = 0, 0
    for _ in range(experiments):
        a = RNG.binomial(1, 0.1, days * per_day)
        b = RNG.binomial(1, 0.1, days * per_day)
        seq_hit = fixed_hit = False
        for d in range(1, days + 1):
            k = d * per_day
            ta, tb = ArmStats.proportion(k, int(a[:k].sum())), ArmStats.proportion(k, int(b[:k].sum()))
            seq_hit |= sequential_diff(ta, tb, alpha=alpha, n_star=days * per_day).excludes_zero
            fixed_hit |= welch_diff(ta, tb, alpha=alpha).p_value < alpha
        seq_false += seq_hit
        fixed_false += fixed_hit
    assert seq_false / experiments <= alpha + 0.02
    assert fixed_false / experiments > 2 * alpha


def test_sequential_detects_a_real_effect():
    a, b = RNG.binomial(1, 0.13, 20_000), RNG.binomial(1, 0.10, 20_000)
    res = sequential_diff(ArmStats.proportion(20_000, int(a.sum())), ArmStats.proportion(20_000, int(b.sum())),
                          n_star=40_000)
    assert res.excludes_zero and res.ci_low > 0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        ArmStats.proportion(10, 11)
    with pytest.raises(ValueError):
        relative_lift(ArmStats.proportion(10, 1), ArmStats.proportion(10, 0))
    with pytest.raises(ValueError):
        welch_diff(ArmStats.proportion(10, 1), ArmStats.proportion(10, 2), alternative="bigger")
    with pytest.raises(ValueError):
        leads_per_arm(0.0, 0.1)


def test_cuped_matches_welch_on_the_adjusted_values_and_removes_the_explained_variance():
    """Independent reference: theta from numpy's covariance of both arms together, then scipy's
    Welch test on y - theta x; the variance removed is about corr(x, y)^2."""
    from flywheel_pipeline.core.stats import regression_adjusted

    x_c, x_t = RNG.poisson(2, 3000).astype(float), RNG.poisson(2, 3300).astype(float)
    y_c, y_t = 0.5 * x_c + RNG.normal(0, 1, 3000), 0.5 * x_t + RNG.normal(0.08, 1, 3300)
    x, y = np.concatenate([x_c, x_t]), np.concatenate([y_c, y_t])
    theta = np.cov(x, y)[0, 1] / np.var(x, ddof=1)
    ref = stats.ttest_ind(y_t - theta * x_t, y_c - theta * x_c, equal_var=False)
    ours = regression_adjusted(ArmStats.from_values(y_t, x_t), ArmStats.from_values(y_c, x_c))
    assert ours.theta == pytest.approx(theta, rel=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6) and ours.df == pytest.approx(ref.df, rel=1e-9)
    assert ours.estimate == pytest.approx((y_t - theta * x_t).mean() - (y_c - theta * x_c).mean(), rel=1e-9)
    assert ours.variance_reduction == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, abs=0.02)
    plain = welch_diff(ArmStats.from_values(y_t), ArmStats.from_values(y_c))
    assert ours.se < plain.se
    # relative: the adjusted difference over the control's unadjusted mean
    rel = regression_adjusted(ArmStats.from_values(y_t, x_t), ArmStats.from_values(y_c, x_c), relative=True)
    assert rel.estimate == pytest.approx(ours.estimate / y_c.mean(), rel=1e-9)


def test_power_and_sample_size_match_statsmodels_and_each_other():
    from statsmodels.stats.power import NormalIndPower as Power

    from flywheel_pipeline.core.stats.planning import (leads_needed, minimum_detectable_lift, power,
                                                       proportion_moments)

    mean, var = proportion_moments(0.05)
    # 10/90: 1,000 treatment leads, ratio 9; statsmodels' effect size is the standardised difference
    ref = Power().power(effect_size=mean * 0.25 / math.sqrt(var), nobs1=1000, alpha=0.05, ratio=9,
                        alternative="larger")
    assert power(mean=mean, var=var, n=10_000, share=0.1, lift=0.25) == pytest.approx(ref, rel=1e-9)
    n = leads_needed(mean=mean, var=var, share=0.5, lift=0.25)
    assert power(mean=mean, var=var, n=n, share=0.5, lift=0.25) >= 0.8 > power(mean=mean, var=var, n=n - 1,
                                                                                share=0.5, lift=0.25)
    mde = minimum_detectable_lift(mean=mean, var=var, n=n, share=0.5)
    assert mde == pytest.approx(0.25, rel=1e-3)
    seq = leads_needed(mean=mean, var=var, share=0.5, lift=0.25, sequential=True)
    assert seq > n  # looking every day costs leads
    assert power(mean=mean, var=var, n=seq, share=0.5, lift=0.25, sequential=True) >= 0.8


def test_sequential_power_is_a_lower_bound_of_the_simulated_power():
    """Normal data, daily looks up to N*: the always-valid test rejects at least as often as the
    power computed for the last look."""
    from flywheel_pipeline.core.stats.planning import power

    experiments, looks, per_look, effect = 600, 20, 100, 0.25
    n_star = 2 * looks * per_look
    hits = 0
    for _ in range(experiments):
        a = RNG.normal(effect, 1, (looks, per_look)).cumsum(axis=None).reshape(looks, per_look)[:, -1]
        b = RNG.normal(0, 1, (looks, per_look)).cumsum(axis=None).reshape(looks, per_look)[:, -1]
        for k in range(looks):
            n = (k + 1) * per_look
            if sequential_diff(ArmStats(n, a[k], a[k] ** 2 / n + n - 1), ArmStats(n, b[k], b[k] ** 2 / n + n - 1),
                               alpha=0.05, n_star=n_star).ci_low > 0:
                hits += 1
                break
    bound = power(mean=1.0, var=1.0, n=n_star, share=0.5, lift=effect, one_sided=False, sequential=True,
                  n_star=n_star)
    assert hits / experiments >= bound - 0.04
