"""The statistics engine against GrowthBook's gbstats 0.8.0, the reference engine, to 1e-5.

The reference values were computed by gbstats itself (``data/gbstats_reference.py``, run in its
own environment because gbstats pins numpy<2 and pandas<2) and are compared here with what our
functions compute from the same sufficient statistics. Where we differ on purpose, the test
says how and checks both ways:
* proportions: gbstats' ProportionStatistic uses the variance p (1 - p); ArmStats uses the
  unbiased n - 1 variance for every metric. With the sum of squares that gives p (1 - p), ours
  matches gbstats'; as stored (n - 1), ours matches gbstats' SampleMeanStatistic of the same 0/1 data;
* the one-sided "less" interval: gbstats 0.8.0 reports [-inf, estimate - width]; the upper bound
  of a one-sided interval is estimate + width (the p-values agree).
"""

from __future__ import annotations

import json
import math

import pytest

from flywheel_pipeline.core.stats import (ArmStats, regression_adjusted, relative_lift, sequential_diff,
                                          welch_diff)
from flywheel_pipeline.core.stats import cuped
from flywheel_pipeline.core.stats.sequential import sequential_test
from flywheel_pipeline_tests.conftest import REPO

CASES = json.loads((REPO / "flywheel_pipeline_tests" / "data" / "gbstats_reference.json").read_text())["cases"]
TOL = dict(rel=1e-5, abs=1e-9)


def _value(v):
    return {"inf": math.inf, "-inf": -math.inf}.get(v, v) if isinstance(v, str) else v


def _arm(spec: dict, statistic: str) -> ArmStats:
    n, s = spec["n"], spec["sum_y"]
    s2 = spec["sum_y2"]
    if statistic == "proportion":  # gbstats' p (1 - p): the sum of squares that gives it with n - 1
        p = s / n
        s2 = s * s / n + (n - 1) * p * (1 - p)
    x = [spec.get(k) for k in ("sum_x", "sum_x2", "sum_xy")]
    return ArmStats(n, s, s2, *x) if x[0] is not None else ArmStats(n, s, s2)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_gbstats(case):
    t, c = _arm(case["treatment"], case["statistic"]), _arm(case["control"], case["statistic"])
    relative = case["difference"] == "relative"
    alpha = case["alpha"]
    if case["cuped"]:
        theta = cuped.theta(t, c)
        assert theta == pytest.approx(case["theta"], **TOL)
        for arm, key in ((t, "treatment"), (c, "control")):
            moments = cuped.adjusted(arm, theta)
            assert moments.mean == pytest.approx(case[f"{key}_adjusted_mean"], **TOL)
            assert moments.var == pytest.approx(case[f"{key}_adjusted_variance"], **TOL)
    if case["test"] == "sequential":
        if case["cuped"]:
            res = sequential_test(cuped.adjusted(t, theta), cuped.adjusted(c, theta), alpha=alpha,
                                  n_star=case["n_star"], relative=relative)
        else:
            res = sequential_diff(t, c, alpha=alpha, n_star=case["n_star"], relative=relative)
    elif case["cuped"]:
        res = regression_adjusted(t, c, alpha=alpha, relative=relative, alternative=case["test"])
        assert res.df == pytest.approx(case["dof"], **TOL)
        assert res.se == pytest.approx(case["uplift_stddev"], **TOL)
    else:
        fn = relative_lift if relative else welch_diff
        res = fn(t, c, alpha=alpha, alternative=case["test"])
        assert res.df == pytest.approx(case["dof"], **TOL)
        assert res.se == pytest.approx(case["uplift_stddev"], **TOL)
    assert res.estimate == pytest.approx(case["expected"], **TOL)
    assert res.p_value == pytest.approx(case["p_value"], **TOL)
    low, high = _value(case["ci_low"]), _value(case["ci_high"])
    if case["test"] == "less":  # gbstats' upper bound is estimate - width; it is estimate + width
        assert res.ci_low == -math.inf and low == -math.inf
        assert res.ci_high - res.estimate == pytest.approx(res.estimate - high, **TOL)
    else:
        assert (res.ci_low, res.ci_high) == (pytest.approx(low, **TOL), pytest.approx(high, **TOL))


def test_sequential_p_values_below_one_are_exercised():
    """The always-valid p-value formula itself (not only its cap at 1) is compared."""
    assert sum(1 for c in CASES if c["test"] == "sequential" and c["p_value"] < 0.99) >= 3


def test_proportions_with_the_n_minus_1_variance_differ_from_gbstats_proportion_statistic_as_documented():
    by_name = {c["name"]: c for c in CASES}
    for kind in ("unbalanced", "balanced"):
        as_prop = by_name[f"prop_{kind}_as_proportion_two-sided_absolute"]
        as_mean = by_name[f"prop_{kind}_as_mean_two-sided_absolute"]
        spec_t, spec_c = as_prop["treatment"], as_prop["control"]
        ours = welch_diff(ArmStats.proportion(spec_t["n"], int(spec_t["sum_y"])),
                          ArmStats.proportion(spec_c["n"], int(spec_c["sum_y"])))
        assert ours.p_value == pytest.approx(as_mean["p_value"], **TOL)  # n - 1: gbstats' SampleMeanStatistic
        assert ours.p_value != pytest.approx(as_prop["p_value"], rel=1e-6)  # not its ProportionStatistic...
        assert ours.p_value == pytest.approx(as_prop["p_value"], rel=2e-3)  # ...but close at these sizes
