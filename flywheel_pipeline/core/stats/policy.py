"""The default A/B decision policy, over per-arm sufficient statistics of per-lead metrics.

Primary metric: a weighted score per lead (close 50%, meeting 30%, reply 20%). Decision:
* ``inconclusive`` when the split is broken (sample-ratio mismatch): fix it before trusting any result;
* ``rollback`` when a guardrail fails: the negative-reply or unsubscribe rate rises
  significantly (always-valid interval above 0), or cost per meeting rises by more than
  ``max_cost_increase`` with the always-valid lower bound of the rise above that limit (a
  ratio metric per lead, delta method on the log scale: a handful of early meetings cannot
  trip it); or when the primary metric's always-valid interval lies below 0;
* ``promote`` when the primary metric's always-valid interval lies above 0 and no guardrail fails;
* ``inconclusive`` when the planned sample (N*) is reached without a verdict; else ``continue``.
Fixed-horizon p-values are reported too (Holm-adjusted across metrics) but never decide,
because the results are looked at every day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from flywheel_pipeline.core.stats.decisions import gaussian_bayes, holm, sample_ratio_mismatch
from flywheel_pipeline.core.stats.frequentist import (fisher_exact, needs_exact_test, ratio_diff,
                                                      ratio_mean_and_var, relative_lift, welch_diff)
from flywheel_pipeline.core.stats.sequential import cs_radius, sequential_diff
from flywheel_pipeline.core.stats.sufficient import ArmStats

PRIMARY = "weighted_score"
COST_PER_MEETING = "cost_per_meeting"  # ratio metric: y = generation cost, x = meeting (0/1), per lead
RATIOS = ("revenue_per_message", COST_PER_MEETING)
PROPORTIONS = ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
               "unsubscribe_rate")
GUARDRAILS = ("negative_reply_rate", "unsubscribe_rate")


@dataclass(frozen=True)
class PolicyConfig:
    alpha: float = 0.05
    n_star: float = 5_000  # expected leads in the experiment (tunes the confidence sequence)
    max_cost_increase: float = 0.25  # cost per meeting may rise by at most 25%
    srm_threshold: float = 0.001


@dataclass
class MetricResult:
    metric: str
    challenger: float
    champion: float
    lift: float
    relative_lift: float | None
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float | None
    seq_low: float
    seq_high: float
    chance_to_win: float
    expected_loss: float
    exact_test: bool = False


@dataclass
class Decision:
    decision: str
    reason: str
    srm_p_value: float
    leads: dict[str, int]
    metrics: list[MetricResult] = field(default_factory=list)


def _metric(name: str, t: ArmStats, c: ArmStats, cfg: PolicyConfig) -> MetricResult:
    if name in RATIOS:
        if not t.sum_x or not c.sum_x:  # no denominator yet (no meeting in an arm): nothing to estimate
            nan = float("nan")
            return MetricResult(name, nan, nan, nan, None, -math.inf, math.inf, nan, None, -math.inf, math.inf,
                                nan, nan)
        est = ratio_diff(t, c, alpha=cfg.alpha)
        rt, rc = ratio_mean_and_var(t)[0], ratio_mean_and_var(c)[0]
        return MetricResult(name, rt, rc, est.estimate, None if rc == 0 else rt / rc - 1, est.ci_low, est.ci_high,
                            est.p_value, None, -math.inf, math.inf, float("nan"), float("nan"))
    est = welch_diff(t, c, alpha=cfg.alpha)
    p_value, exact = est.p_value, False
    if name in PROPORTIONS and needs_exact_test(int(t.sum_y), t.n, int(c.sum_y), c.n):
        p_value, exact = fisher_exact(int(t.sum_y), t.n, int(c.sum_y), c.n), True
    rel = relative_lift(t, c, alpha=cfg.alpha).estimate if c.mean > 0 else None
    seq = sequential_diff(t, c, alpha=cfg.alpha, n_star=cfg.n_star)
    bayes = gaussian_bayes(t, c) if t.n > 1 and c.n > 1 else None
    return MetricResult(name, t.mean, c.mean, est.estimate, rel, est.ci_low, est.ci_high, p_value, None,
                        seq.ci_low, seq.ci_high, bayes.chance_to_win if bayes else float("nan"),
                        bayes.expected_loss if bayes else float("nan"), exact)


def cost_per_meeting_rise(t: ArmStats, c: ArmStats, cfg: PolicyConfig) -> tuple[float, float] | None:
    """Relative change of cost per meeting (challenger / champion - 1) and its always-valid lower
    bound (asymptotic confidence sequence on the log ratio, delta method); None before both arms
    have meetings and costs."""
    if t.n < 2 or c.n < 2 or not t.sum_x or not c.sum_x:
        return None
    rt, vt = ratio_mean_and_var(t)
    rc, vc = ratio_mean_and_var(c)
    if rt <= 0 or rc <= 0:
        return None
    log_ratio = math.log(rt / rc)
    se = math.sqrt(vt / rt ** 2 + vc / rc ** 2)
    n = t.n + c.n
    radius = cs_radius(n, se * math.sqrt(n), cfg.alpha, cfg.n_star)
    return math.exp(log_ratio) - 1, math.exp(log_ratio - radius) - 1


def decide(stats: dict[str, dict[str, ArmStats]], weights: dict[str, float],
           cfg: PolicyConfig | None = None) -> Decision:
    """``stats[metric][arm]`` for arms 'challenger' and 'champion' (``cost_per_meeting`` as a
    ratio metric enables the cost guardrail); ``weights`` the configured traffic shares."""
    cfg = cfg or PolicyConfig()
    arms = ("challenger", "champion")
    leads = {a: stats[PRIMARY][a].n for a in arms}
    srm = sample_ratio_mismatch([leads[a] for a in arms], [weights[a] for a in arms], cfg.srm_threshold)
    if min(leads.values()) < 2:
        return Decision("continue", "not enough mature leads in both arms yet", srm.p_value, leads)
    results = [_metric(name, stats[name]["challenger"], stats[name]["champion"], cfg) for name in stats]
    fixed = [r for r in results if math.isfinite(r.p_value)]
    _, adjusted = holm([r.p_value for r in fixed], cfg.alpha)
    for r, p in zip(fixed, adjusted, strict=True):
        r.p_adjusted = p
    by = {r.metric: r for r in results}
    decision = Decision("continue", "", srm.p_value, leads, results)
    if srm.mismatch:
        decision.decision, decision.reason = "inconclusive", (
            f"sample ratio mismatch: {leads} leads against weights {weights} (chi-square p={srm.p_value:.2g}); "
            "the split is broken, so no result can be trusted")
        return decision
    failed = [g for g in GUARDRAILS if g in by and by[g].seq_low > 0]
    rise = (cost_per_meeting_rise(stats[COST_PER_MEETING]["challenger"], stats[COST_PER_MEETING]["champion"], cfg)
            if COST_PER_MEETING in stats else None)
    if rise is not None and rise[1] > cfg.max_cost_increase:
        failed.append(f"cost_per_meeting up {rise[0]:+.0%} (always-valid lower bound {rise[1]:+.0%}, "
                      f"limit {cfg.max_cost_increase:+.0%})")
    primary = by[PRIMARY]
    if failed:
        decision.decision, decision.reason = "rollback", "guardrail failed: " + ", ".join(failed)
    elif primary.seq_low > 0:
        decision.decision, decision.reason = "promote", (
            f"weighted score {primary.challenger:.4f} vs {primary.champion:.4f}: the always-valid interval "
            f"[{primary.seq_low:.4f}, {primary.seq_high:.4f}] excludes 0 and no guardrail failed")
    elif primary.seq_high < 0:
        decision.decision, decision.reason = "rollback", (
            f"weighted score is worse: always-valid interval [{primary.seq_low:.4f}, {primary.seq_high:.4f}]")
    elif sum(leads.values()) >= cfg.n_star:
        decision.decision, decision.reason = "inconclusive", (
            f"reached the planned {cfg.n_star:.0f} leads without a significant difference")
    else:
        decision.reason = (f"{sum(leads.values())} of {cfg.n_star:.0f} planned leads; the always-valid interval "
                           f"[{primary.seq_low:.4f}, {primary.seq_high:.4f}] still contains 0")
    return decision
