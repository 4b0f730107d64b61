"""core/drivers.py: the stratified effect against references, BH against statsmodels, Simpson's
paradox, null worlds and planted drivers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.multitest import multipletests

from flywheel_pipeline.core.drivers import (ALL_TASKS, Cell, DriversConfig, adjust, cmh_test, drivers, guidance,
                                            mh_risk_difference)

STRATA = [(30, 200, 20, 300), (12, 80, 40, 400), (5, 150, 9, 120)]  # (y1, n1, y0, n0) per organization


def test_cmh_test_and_pooled_odds_match_statsmodels():
    tables = [np.array([[y1, n1 - y1], [y0, n0 - y0]]) for y1, n1, y0, n0 in STRATA]
    reference = StratifiedTable(tables).test_null_odds(correction=False)
    assert cmh_test(STRATA) == pytest.approx(reference.pvalue, rel=1e-10)


def test_mh_risk_difference_by_hand():
    w = [n1 * n0 / (n1 + n0) for _, n1, _, n0 in STRATA]
    d = [y1 / n1 - y0 / n0 for y1, n1, y0, n0 in STRATA]
    rd, var = mh_risk_difference(STRATA)
    assert rd == pytest.approx(sum(wi * di for wi, di in zip(w, d)) / sum(w), rel=1e-12)
    # one stratum: the Sato variance reduces to the unpooled variance p1 q1 / n1 + p0 q0 / n0
    (y1, n1, y0, n0), = STRATA[:1]
    p1, p0 = y1 / n1, y0 / n0
    assert mh_risk_difference(STRATA[:1])[1] == pytest.approx(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0, rel=1e-9)
    assert var > 0


def test_the_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    base, diff, covered, runs = [0.05, 0.15, 0.3], 0.03, 0, 1000
    for _ in range(runs):
        strata = []
        for p, n1, n0 in zip(base, (300, 150, 500), (900, 600, 400)):
            strata.append((int(rng.binomial(n1, p + diff)), n1, int(rng.binomial(n0, p)), n0))
        rd, var = mh_risk_difference(strata)
        covered += abs(rd - diff) <= 1.96 * math.sqrt(var)
    assert 0.93 <= covered / runs <= 0.97


@pytest.mark.parametrize("method,reference", [("bh", "fdr_bh"), ("by", "fdr_by")])
def test_adjustment_matches_multipletests(method, reference):
    p = list(np.random.default_rng(1).uniform(0, 0.2, 40)) + [0.0001, 0.9, 1.0, 0.0001]
    assert adjust(p, method) == pytest.approx(list(multipletests(p, method=reference)[1]), rel=1e-12)
    assert adjust([]) == []


def _cells(rows) -> list[Cell]:
    """rows: (organization, feature, value, n, replies) -> cells with replies as every metric's events."""
    return [Cell(org, "cold_email", feature, value, n, {"reply_rate": y, "positive_reply_rate": y // 2,
                                                          "meeting_rate": y // 3})
            for org, feature, value, n, y in rows]


def test_simpsons_paradox_the_stratified_effect_has_the_right_sign():
    # long bodies are mostly sent by the organization whose leads reply a lot: pooled, "long" looks better;
    # within each organization it is worse by about 4 points
    cells = _cells([("org_a", "body", "long", 4000, 1200), ("org_a", "body", "short", 1000, 340),
                    ("org_b", "body", "long", 1000, 60), ("org_b", "body", "short", 4000, 400)])
    long_n, long_y, short_n, short_y = 5000, 1260, 5000, 740
    assert long_y / long_n - short_y / short_n > 0.1  # unstratified: the wrong sign
    result = {(d.value, d.metric): d for d in drivers(cells, DriversConfig(min_messages=100))}
    long = result[("long", "reply_rate")]
    assert long.significant and long.estimate < 0 and long.ci_high < 0
    assert long.estimate == pytest.approx(-0.04, abs=0.005)


def _world(rng, n=20_000, effect=0.0, orgs=3):
    """Message-level world: eleven features of 2-6 values each, outcomes nested reply > positive > meeting;
    `effect`: the reply-rate difference of value 'v0' of feature 'f0' (the planted driver)."""
    org = rng.integers(0, orgs, n)
    base = np.array([0.05, 0.1, 0.2])[org % 3]
    features = {f"f{i}": rng.integers(0, 2 + i % 5, n) for i in range(11)}
    p = base + effect * (features["f0"] == 0)
    replied = rng.random(n) < p
    positive = replied & (rng.random(n) < 0.5)
    meeting = positive & (rng.random(n) < 0.6)
    cells = []
    for feature, values in features.items():
        for o in range(orgs):
            for v in range(values.max() + 1):
                mask = (org == o) & (values == v)
                cells.append(Cell(f"org_{o}", "cold_email", feature, f"v{v}", int(mask.sum()),
                                  {"reply_rate": int(replied[mask].sum()), "positive_reply_rate":
                                   int(positive[mask].sum()), "meeting_rate": int(meeting[mask].sum())}))
    return cells


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_null_world_has_no_significant_driver(seed):
    results = drivers(_world(np.random.default_rng(seed)))
    assert sum(d.tested for d in results) > 100
    assert not any(d.significant for d in results)


def test_a_planted_driver_is_found_with_the_right_sign_and_nothing_else():
    results = drivers(_world(np.random.default_rng(5), effect=0.03))
    hits = [(d.feature, d.value, d.metric) for d in results if d.significant]
    planted = {d.metric: d for d in results if d.feature == "f0" and d.value == "v0"}
    assert planted["reply_rate"].significant and planted["reply_rate"].estimate > 0
    assert planted["reply_rate"].ci_low < 0.03 < planted["reply_rate"].ci_high
    assert {h[0] for h in hits} == {"f0"}  # value v1 of f0 is the rest's mirror image


def test_the_minimum_sample_gate_reports_but_does_not_test():
    cells = _cells([("org_a", "tone", "formal", 5000, 500), ("org_a", "tone", "rare", 50, 40)])
    result = {(d.value, d.metric): d for d in drivers(cells)}
    rare = result[("rare", "reply_rate")]
    assert rare.n == 50 and rare.rate == 0.8 and not rare.tested and rare.p_adjusted is None and not rare.significant


def test_guidance_names_the_best_body_length_per_task_type():
    rng = np.random.default_rng(8)
    cells = []
    for task, best in (("cold_email", "50-99"), ("follow_up", "0-49")):
        for org, base in (("org_a", 0.1), ("org_b", 0.2)):
            for value in ("0-49", "50-99", "150-199"):
                p = base + (0.05 if value == best else 0) - (0.04 if value == "150-199" else 0)
                n = 3000
                y = int(rng.binomial(n, p))
                cells.append(Cell(org, task, "body_words", value, n,
                                  {"reply_rate": y, "positive_reply_rate": y // 2, "meeting_rate": y // 3}))
    results = drivers(cells)
    assert {d.task_type for d in results} == {ALL_TASKS, "cold_email", "follow_up"}
    advice = guidance(results)
    assert advice["task_types"]["cold_email"]["best"]["word_range"] == [50, 99]
    assert advice["task_types"]["follow_up"]["best"]["word_range"] == [0, 49]
    assert [a["bucket"] for a in advice["task_types"]["cold_email"]["avoid"]] == ["150-199"]


def _task_cells(spec) -> list[Cell]:
    """spec: (organization, task type, feature, value, n, rate) -> cells with the rate for every metric."""
    return [Cell(org, task, feature, value, n, {m: round(n * rate) for m in ("reply_rate", "positive_reply_rate",
                                                                             "meeting_rate")})
            for org, task, feature, value, n, rate in spec]


def test_all_task_types_rows_are_stratified_by_organization_and_task_type():
    # one organization; 'warm' is sent mostly as cold e-mails, whose base rate is six times the
    # follow-ups'. Within each task type warm does 3 points worse: pooled it looks 14 points better
    spec = [("org", "cold_email", "tone", "warm", 4000, 0.27), ("org", "cold_email", "tone", "direct", 1000, 0.30),
            ("org", "follow_up", "tone", "warm", 1000, 0.02), ("org", "follow_up", "tone", "direct", 4000, 0.05)]
    cells = _task_cells(spec)
    warm = next(d for d in drivers(cells)
                if d.task_type == ALL_TASKS and d.value == "warm" and d.metric == "reply_rate")
    assert warm.rate - warm.rest_rate > 0.1  # crude: the wrong sign
    assert warm.estimate == pytest.approx(-0.03, abs=1e-9) and warm.ci_high < 0 and warm.significant
    assert warm.organizations == 1


def test_guidance_picks_the_best_bucket_by_its_effect_not_its_crude_rate():
    # 50-99 words is sent mostly by the organization with the high base rate: the highest crude
    # rate, a small effect; 100-149 has the largest effect within organizations
    spec = [(org, "cold_email", "body_words", value, n, rate) for org, value, n, rate in (
        ("a", "50-99", 6000, 0.47), ("a", "100-149", 1000, 0.5), ("a", "0-49", 3000, 0.40),
        ("b", "50-99", 1000, 0.12), ("b", "100-149", 6000, 0.15), ("b", "0-49", 3000, 0.05))]
    results = drivers(_task_cells(spec))
    rows = {d.value: d for d in results if d.task_type == "cold_email" and d.metric == "reply_rate"}
    assert rows["50-99"].significant and rows["100-149"].significant
    assert rows["50-99"].rate > rows["100-149"].rate and rows["50-99"].estimate < rows["100-149"].estimate
    best = guidance(results)["task_types"]["cold_email"]["best"]
    assert best["bucket"] == "100-149" and best["word_range"] == [100, 149]
