"""Golden reference values from GrowthBook's statistics engine ``gbstats`` 0.8.0.

Computes frequentist A/B results (fixed-horizon two-sided and one-sided Welch
t-tests, and the sequential two-sided test) for control (gbstats' stat_a) vs
treatment (stat_b) from per-arm sufficient statistics, for mean, proportion and
CUPED (regression adjusted) metrics, with absolute and relative differences.
Writes ``gbstats_reference.json`` next to this file: one record per case with
the inputs, the settings and the outputs of ``compute_result()`` plus the test's
Welch-Satterthwaite ``dof`` (and, for CUPED, theta and adjusted arm means and
variances). Infinite CI bounds are stored as the strings "inf" / "-inf".

gbstats 0.8.0 pins numpy<2 and pandas<2, so it cannot be installed in the
project's environment. Re-run it in its own venv:

    python3 -m venv /tmp/gbref/venv
    /tmp/gbref/venv/bin/pip install 'gbstats==0.8.0' 'numpy<2' 'pandas<2' 'scipy<2'
    /tmp/gbref/venv/bin/python flywheel_pipeline_tests/data/gbstats_reference.py

(Generated with gbstats 0.8.0, numpy 1.26.4, scipy 1.17.1, pydantic 2.14.4.)
"""
import json
import math
from pathlib import Path

import numpy as np
from gbstats.frequentist.tests import (
    FrequentistConfig, OneSidedTreatmentGreaterTTest, OneSidedTreatmentLesserTTest,
    SequentialConfig, SequentialTwoSidedTTest, TwoSidedTTest)
from gbstats.models.statistics import (
    ProportionStatistic, RegressionAdjustedStatistic, SampleMeanStatistic, compute_theta)

TESTS = {"two-sided": TwoSidedTTest, "greater": OneSidedTreatmentGreaterTTest,
         "less": OneSidedTreatmentLesserTTest, "sequential": SequentialTwoSidedTTest}


def num(x):
    x = float(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    assert not math.isnan(x)
    return x


def simple(arm, statistic):
    if statistic == "proportion":
        return ProportionStatistic(n=arm["n"], sum=arm["sum_y"])
    return SampleMeanStatistic(n=arm["n"], sum=arm["sum_y"], sum_squares=arm["sum_y2"])


def cuped(arm, statistic, theta):
    return RegressionAdjustedStatistic(
        n=arm["n"], post_statistic=simple(arm, statistic),
        pre_statistic=SampleMeanStatistic(n=arm["n"], sum=arm["sum_x"], sum_squares=arm["sum_x2"]),
        post_pre_sum_of_products=arm["sum_xy"], theta=theta)


def run(name, control, treatment, statistic, test, difference, alpha=0.05, n_star=None, is_cuped=False):
    case = {"name": name, "control": control, "treatment": treatment, "statistic": statistic,
            "cuped": is_cuped, "test": test, "difference": difference, "alpha": alpha, "n_star": n_star}
    if is_cuped:
        theta = compute_theta(cuped(control, statistic, 0.0), cuped(treatment, statistic, 0.0))
        a, b = cuped(control, statistic, theta), cuped(treatment, statistic, theta)
        case["theta"] = num(theta)
    else:
        a, b = simple(control, statistic), simple(treatment, statistic)
    if test == "sequential":
        cfg = SequentialConfig(alpha=alpha, difference_type=difference, sequential_tuning_parameter=n_star)
    else:
        cfg = FrequentistConfig(alpha=alpha, difference_type=difference)
    t = TESTS[test](a, b, cfg)
    r = t.compute_result()
    assert r.error_message is None, (name, r.error_message)
    case.update(expected=num(r.expected), ci_low=num(r.ci[0]), ci_high=num(r.ci[1]),
                p_value=num(r.p_value), uplift_stddev=num(r.uplift.stddev), dof=num(t.dof))
    if is_cuped:
        case.update(control_adjusted_mean=num(t.stat_a.mean), control_adjusted_variance=num(t.stat_a.variance),
                    treatment_adjusted_mean=num(t.stat_b.mean), treatment_adjusted_variance=num(t.stat_b.variance))
    return case


def arm(n, sum_y, sum_y2):
    return {"n": int(n), "sum_y": float(sum_y), "sum_y2": float(sum_y2)}


def arm_from_arrays(y, x):
    return {**arm(len(y), y.sum(), (y * y).sum()),
            "sum_x": float(x.sum()), "sum_x2": float((x * x).sum()), "sum_xy": float((x * y).sum())}


def cuped_data():
    rng = np.random.default_rng(7)  # continuous outcome: post = 0.3*pre + N(0,1) (+0.05 treatment)
    normal = []
    for n, lift in ((2000, 0.0), (2200, 0.05)):
        pre = rng.poisson(2.0, n).astype(float)
        normal.append(arm_from_arrays(0.3 * pre + rng.normal(0.0, 1.0, n) + lift, pre))
    rng = np.random.default_rng(7)  # rare binary outcome driven by engagement counts
    rare = []
    for n, lift in ((9000, 0.0), (1000, 0.005)):
        pre = rng.binomial(3, 0.05, n).astype(float)
        rare.append(arm_from_arrays(rng.binomial(1, 0.03 + 0.02 * pre + lift).astype(float), pre))
    return normal, rare


def main():
    cases = []
    means = {"mean": (arm(1000, 1500, 4000), arm(1200, 1900, 5100)),
             "mean_skewed_rare": (arm(9000, 130.5, 57.2), arm(1000, 16.9, 7.1))}
    for label, (c, t) in means.items():
        for diff in ("absolute", "relative"):
            for test in ("two-sided", "greater", "less"):
                cases.append(run(f"{label}_{test}_{diff}", c, t, "mean", test, diff))
            for n_star in (5000, 20000):
                cases.append(run(f"{label}_sequential{n_star}_{diff}", c, t, "mean", "sequential", diff, n_star=n_star))
    c, t = means["mean"]
    cases.append(run("mean_two-sided_relative_alpha0.1", c, t, "mean", "two-sided", "relative", alpha=0.1))

    props = {"prop_unbalanced": (arm(10000, 500, 500), arm(1000, 62, 62)),
             "prop_balanced": (arm(5000, 520, 520), arm(5000, 480, 480))}
    for label, (c, t) in props.items():
        for statistic in ("proportion", "mean"):
            for diff in ("absolute", "relative"):
                cases.append(run(f"{label}_as_{statistic}_two-sided_{diff}", c, t, statistic, "two-sided", diff))
                cases.append(run(f"{label}_as_{statistic}_sequential10000_{diff}", c, t, statistic,
                                 "sequential", diff, n_star=10000))

    normal, rare = cuped_data()
    for label, (c, t), statistic in (("cuped_normal", normal, "mean"), ("cuped_rare", rare, "proportion")):
        for diff in ("absolute", "relative"):
            cases.append(run(f"{label}_two-sided_{diff}", c, t, statistic, "two-sided", diff, is_cuped=True))
        cases.append(run(f"{label}_sequential10000_relative", c, t, statistic, "sequential", "relative",
                         n_star=10000, is_cuped=True))

    out = Path(__file__).with_name("gbstats_reference.json")
    with open(out, "w") as f:
        json.dump({"source": "gbstats 0.8.0", "cases": cases}, f, indent=1, allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
