"""judge_calibration's statistics (core/calibration.py over the SQL of warehouse/judge_calibration.py):
the AUC against sklearn, DeLong's variance against its pairwise definition, Spearman against scipy,
the interval's coverage and the trust rule's false-trust rate by simulation."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, spearmanr
from sklearn.metrics import roc_auc_score

from flywheel_pipeline.core.calibration import AucStats, CalibrationConfig, calibrate, delong, spearman_p_value
from flywheel_pipeline.warehouse.judge_calibration import auc_stats, decile_rows


def _frame(rng, groups: int, n: int, p_pos: float, p_neg: float, rate: float = 0.2, trials: int = 10):
    """Per group: outcomes ~ Bernoulli(rate); scores ~ Binomial(trials, p_pos) for positives and
    (trials, p_neg) for negatives: discrete, many ties."""
    y = rng.random((groups, n)) < rate
    score = np.where(y, rng.binomial(trials, p_pos, (groups, n)), rng.binomial(trials, p_neg, (groups, n)))
    frame = pd.DataFrame({
        "judge": np.repeat([f"g{g:04d}" for g in range(groups)], n), "criteria_version": "1",
        "task_type": "cold_email", "message_key": np.tile(np.arange(n), groups),
        "score": score.ravel().astype(float), "reply": y.ravel().astype(int),
        "positive_reply": (y & (rng.random((groups, n)) < 0.5)).ravel().astype(int),
        "meeting": np.zeros(groups * n, dtype=int), "quality_score": score.ravel() + rng.normal(0, 3, groups * n)})
    return frame


def _stats(frame: pd.DataFrame) -> dict[tuple[str, str, str], AucStats]:
    con = duckdb.connect()
    con.register("_sim", frame)
    out = {(s.judge, s.task_type, s.metric): s for s in auc_stats(con, "SELECT * FROM _sim")}
    con.close()
    return out


def _pairwise_delong(score: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong by its definition: the placement of every positive among all negatives and vice versa."""
    pos, neg = score[y == 1], score[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


def test_auc_delong_and_spearman_equal_their_references():
    rng = np.random.default_rng(3)
    frame = _frame(rng, 3, 700, 0.6, 0.45)
    stats = _stats(frame)
    for g in ("g0000", "g0001", "g0002"):
        rows = frame[frame.judge == g]
        for metric in ("reply", "positive_reply"):
            s = stats[(g, "cold_email", metric)]
            auc, se = delong(s)
            ref_auc, ref_se = _pairwise_delong(rows.score.to_numpy(), rows[metric].to_numpy())
            assert auc == pytest.approx(roc_auc_score(rows[metric], rows.score), abs=1e-12)
            assert auc == pytest.approx(ref_auc, abs=1e-12) and se == pytest.approx(ref_se, rel=1e-9)
            assert s.n == len(rows) and s.positives == rows[metric].sum()
        rho, p = spearmanr(rows.score, rows.quality_score)
        s = stats[(g, "cold_email", "reply")]
        assert s.spearman == pytest.approx(rho, abs=1e-9) and s.quality_n == len(rows)
        assert spearman_p_value(s.spearman, s.quality_n) == pytest.approx(p, rel=1e-6)
        # the all-task-types row holds the same messages here
        assert stats[(g, "all", "reply")].sum_v10 == pytest.approx(s.sum_v10)
    # a metric with no positives has no AUC and is never trusted
    meeting = calibrate([stats[("g0000", "cold_email", "meeting")]])[0]
    assert meeting.auc is None and not meeting.trusted


def test_deciles_split_the_scores_in_ten():
    rng = np.random.default_rng(5)
    frame = _frame(rng, 1, 1000, 0.7, 0.4)
    con = duckdb.connect()
    con.register("_sim", frame)
    rows = [d for d in decile_rows(con, "SELECT * FROM _sim") if d["task_type"] == "cold_email"]
    assert [d["decile"] for d in rows] == list(range(1, 11)) and all(d["n"] == 100 for d in rows)
    assert [d["mean_score"] for d in rows] == sorted(d["mean_score"] for d in rows)
    ordered = frame.sort_values(["score", "message_key"]).reset_index(drop=True)
    assert rows[-1]["reply_rate"] == pytest.approx(ordered.reply[900:].mean())
    assert rows[-1]["reply_rate"] > rows[0]["reply_rate"]  # this judge predicts replies


def _true_auc(trials: int, p_pos: float, p_neg: float) -> float:
    k = np.arange(trials + 1)
    fp, fn = binom.pmf(k, trials, p_pos), binom.pmf(k, trials, p_neg)
    below = np.cumsum(fn) - fn
    return float((fp * (below + 0.5 * fn)).sum())


def test_delong_interval_covers_the_true_auc_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    reps = 600
    truth = _true_auc(10, 0.55, 0.45)
    stats = _stats(_frame(rng, reps, 400, 0.55, 0.45))
    covered = 0
    for g in range(reps):
        auc, se = delong(stats[(f"g{g:04d}", "cold_email", "reply")])
        covered += abs(auc - truth) <= 1.959964 * se
    assert 0.925 <= covered / reps <= 0.975, covered / reps


def test_no_judge_is_trusted_on_null_worlds_beyond_the_promised_rate():
    """Uninformative judges (scores independent of outcomes): the share of runs in which any row
    is trusted stays at most alpha = 5% (the simultaneous intervals promise alpha / 2)."""
    rng = np.random.default_rng(17)
    runs, judges = 250, 4
    stats = _stats(_frame(rng, runs * judges, 500, 0.5, 0.5))
    config = CalibrationConfig()
    any_trusted = 0
    for run in range(runs):
        rows = [s for (judge, _, _), s in stats.items() if int(judge[1:]) // judges == run]
        assert len(rows) == judges * 2 * 3
        any_trusted += any(c.trusted for c in calibrate(rows, config))
    assert any_trusted / runs <= config.alpha, any_trusted / runs


def test_an_informative_judge_is_trusted_and_the_gate_needs_enough_messages():
    rng = np.random.default_rng(23)
    stats = _stats(_frame(rng, 1, 3000, 0.6, 0.45))
    rows = calibrate(list(stats.values()))
    reply = next(c for c in rows if c.metric == "reply" and c.task_type == "all")
    assert reply.trusted and reply.auc_low > 0.5 and reply.interval_level == pytest.approx(1 - 0.05 / 4)
    # the same judge on few messages: not enough to be trusted, whatever its AUC
    few = _stats(_frame(rng, 1, 150, 0.8, 0.2))
    assert not any(c.trusted or c.gated for c in calibrate(list(few.values())))


def _row(trusted: bool, gated: bool = True) -> dict:
    return {"n": 900, "auc": 0.58 if trusted else 0.51, "auc_low": 0.53 if trusted else 0.47,
            "auc_high": 0.63 if trusted else 0.55, "gated": gated, "trusted": trusted}


def test_the_gate_lets_only_a_trusted_judge_decide():
    from flywheel_pipeline.core.judge import ScorerJudge
    from flywheel_pipeline.core.judge_gate import OUTCOMES, choose_decider, gate_passes

    llm, heuristic = "deepeval-geval:judge", "heuristic:email_writing"
    both = choose_decider(llm, heuristic, {llm: _row(True), heuristic: _row(True)}, "reply", "all")
    assert both.decided_by == llm and both.trusted
    fallback = choose_decider(llm, heuristic, {llm: _row(False), heuristic: _row(True)}, "reply", "all")
    assert fallback.decided_by == heuristic and "not trusted" in fallback.reason
    nobody = choose_decider(llm, heuristic, {heuristic: _row(False, gated=False)}, "reply", "cold_email")
    assert nobody.decided_by == OUTCOMES and not nobody.trusted
    assert "has no calibration" in nobody.reason and "too few messages" in nobody.reason
    assert choose_decider(llm, None, {}, "meeting", "all").decided_by == OUTCOMES
    # without a trusted judge a losing tally blocks nothing; with one it does
    assert gate_passes(nobody, 0.1, 0.9, 0.05) and not gate_passes(fallback, 0.1, 0.9, 0.05)
    assert gate_passes(fallback, 0.5, 0.52, 0.05)
    assert ScorerJudge("email_writing").name == heuristic
    with pytest.raises(ValueError, match="no heuristic scorer"):
        ScorerJudge("poetry")
