"""The A/B decision policy on constructed arms."""

from __future__ import annotations

from flywheel_pipeline.core.stats.policy import PolicyConfig, cost_per_meeting_rise, decide
from flywheel_pipeline.core.stats.sufficient import ArmStats

W = {"challenger": 0.5, "champion": 0.5}


def arms(n_t, n_c, rates_t, rates_c, revenue=(0.0, 0.0)):
    out = {}
    for name in ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
                 "unsubscribe_rate"):
        out[name] = {"challenger": ArmStats.proportion(n_t, round(n_t * rates_t.get(name, 0.05))),
                     "champion": ArmStats.proportion(n_c, round(n_c * rates_c.get(name, 0.05)))}

    def score(n, r):
        mean = 0.5 * r.get("close_rate", 0.05) + 0.3 * r.get("meeting_rate", 0.05) + 0.2 * r.get("reply_rate", 0.05)
        return ArmStats(n, mean * n, mean * n * 0.5)  # variance ~ 0.5 * mean - mean^2, positive

    out["weighted_score"] = {"challenger": score(n_t, rates_t), "champion": score(n_c, rates_c)}
    return out


def test_promote_when_the_primary_metric_clearly_improves():
    d = decide(arms(20_000, 20_000, {"close_rate": 0.08, "meeting_rate": 0.2, "reply_rate": 0.3},
                    {"close_rate": 0.05, "meeting_rate": 0.1, "reply_rate": 0.2}), W, PolicyConfig(n_star=40_000))
    assert d.decision == "promote" and "excludes 0" in d.reason
    primary = next(m for m in d.metrics if m.metric == "weighted_score")
    assert primary.seq_low > 0 and primary.chance_to_win > 0.99
    assert all(m.p_adjusted is not None for m in d.metrics)


def test_guardrail_failure_rolls_back_even_with_a_better_primary():
    d = decide(arms(20_000, 20_000, {"close_rate": 0.08, "meeting_rate": 0.2, "unsubscribe_rate": 0.09},
                    {"close_rate": 0.05, "meeting_rate": 0.1, "unsubscribe_rate": 0.02}), W, PolicyConfig())
    assert d.decision == "rollback" and "unsubscribe_rate" in d.reason


def cost_arm(n: int, cost_per_lead: float, meetings: int) -> ArmStats:
    """Per-lead generation cost (constant here) over meetings (0/1 per lead), as a ratio metric."""
    return ArmStats(n, n * cost_per_lead, n * cost_per_lead ** 2, meetings, meetings, cost_per_lead * meetings)


def test_cost_per_meeting_guardrail_needs_evidence_not_a_few_meetings():
    same = {"meeting_rate": 0.1}
    doubled = arms(5_000, 5_000, same, same)
    doubled["cost_per_meeting"] = {"challenger": cost_arm(5_000, 0.004, 500), "champion": cost_arm(5_000, 0.002, 500)}
    d = decide(doubled, W, PolicyConfig())
    assert d.decision == "rollback" and "cost_per_meeting up +100%" in d.reason
    cpm = next(m for m in d.metrics if m.metric == "cost_per_meeting")
    assert abs(cpm.challenger - 0.04) < 1e-12 and abs(cpm.champion - 0.02) < 1e-12
    # 15 leads with one meeting against 160 with eight: a point estimate far above the limit, no evidence
    early = arms(15, 160, same, same)
    early["cost_per_meeting"] = {"challenger": cost_arm(15, 0.002, 1), "champion": cost_arm(160, 0.002, 16)}
    rise, lower = cost_per_meeting_rise(early["cost_per_meeting"]["challenger"],
                                        early["cost_per_meeting"]["champion"], PolicyConfig())
    assert rise > 0.25 and lower < 0.25
    assert decide(early, W, PolicyConfig()).decision != "rollback"
    # no meeting in an arm yet: the ratio is undefined, reported as NaN and never decisive
    none = arms(200, 200, same, same)
    none["cost_per_meeting"] = {"challenger": cost_arm(200, 0.002, 0), "champion": cost_arm(200, 0.002, 20)}
    d = decide(none, W, PolicyConfig())
    assert cost_per_meeting_rise(none["cost_per_meeting"]["challenger"], none["cost_per_meeting"]["champion"],
                                 PolicyConfig()) is None and "cost_per_meeting" not in d.reason


def test_srm_stops_the_decision_and_small_counts_use_fishers_test():
    d = decide(arms(9_000, 11_000, {}, {}), W, PolicyConfig())
    assert d.decision == "inconclusive" and "sample ratio mismatch" in d.reason
    small = decide(arms(60, 60, {"close_rate": 0.02}, {"close_rate": 0.0}), W, PolicyConfig())
    close = next(m for m in small.metrics if m.metric == "close_rate")
    assert close.exact_test and small.decision == "continue"


def test_continue_then_inconclusive_at_the_planned_sample():
    same = {"reply_rate": 0.2}
    assert decide(arms(500, 500, same, same), W, PolicyConfig(n_star=5_000)).decision == "continue"
    assert decide(arms(3_000, 3_000, same, same), W, PolicyConfig(n_star=5_000)).decision == "inconclusive"
    assert decide(arms(1, 1, same, same), W, PolicyConfig()).reason.startswith("not enough")
