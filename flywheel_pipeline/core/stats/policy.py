"""The experiment decision policy: a ramp of steps, each deciding on per-arm sufficient statistics
of per-lead metrics, for any number of challengers against the control arm ``champion``.

The ramp (after Xu et al., "SQR: Balancing Speed, Quality and Risk in Online Experiments",
KDD 2018). A step whose arms have unequal shares (10/90, 80/10/10) is a **harm** step: it
exists to catch a challenger that hurts, and tests only that (one-sided: the weighted score
lower, the negative-reply or unsubscribe rate higher, cost per meeting up by more than
``max_cost_increase``). A challenger with no harm seen by the step's planned size ``n_star``
moves on (``promote`` to the next step) if its weighted score is at most ``tolerated_drop`` below
the champion's, else the step ends ``inconclusive`` (not proven harmful, not worth the risk:
a challenger 40% worse is almost never moved on at a 10/90 step). A step whose arms have equal shares (50/50) has the
most power and is the **efficacy** step: a challenger is promoted when its weighted score is
significantly higher and no harm is seen, rolled back on harm, and ``inconclusive`` when the
planned size passes without either.

Error rates. The harm hypotheses of all challengers form one family, the "challenger is better"
hypotheses another; each family's error is held at ``alpha`` over every daily look:
* a share ``interim_share`` of alpha goes to always-valid one-sided p-values (confidence
  sequences, see sequential.py), which may stop the step at any look;
* the rest goes to one fixed-horizon one-sided test at the planned end, the first look with
  ``n_star`` leads (a Haybittle-Peto-like split; the union bound makes the total at most alpha);
* within a family, Holm's weighted procedure: the weighted score gets ``primary_share`` of the
  harm family's alpha, the guardrails share the rest; challengers share equally.
Every test that decides pools the variance of both arms, as the null hypothesis of no
difference says they are one population: at a 10/90 split with rare outcomes the small arm's
own variance collapses when it has no meeting or deal yet, which made a Welch-variance rule
roll back one harmless challenger in ten. Rare guardrail counts at the planned end use
Fisher's exact test. The weighted score is CUPED-adjusted when the arms carry a pre-experiment
covariate (``sum_x``...).

``inconclusive`` also when the split is broken (sample-ratio mismatch): fix it before trusting
any result. Reported but never deciding: Welch intervals (fixed-horizon and always-valid) of
each metric, Holm-adjusted fixed-horizon p-values across metrics, chance to win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
import typing
from typing import Literal

from scipy import special

from flywheel_pipeline.core.stats import cuped, planning
from flywheel_pipeline.core.stats.decisions import gaussian_bayes, holm, sample_ratio_mismatch, weighted_holm
from flywheel_pipeline.core.stats.frequentist import (Moments, check_alpha, fisher_exact, needs_exact_test,
                                                      null_pooled_z, ratio_diff, ratio_mean_and_var, welch_test)
from flywheel_pipeline.core.stats.sequential import DEFAULT_PLANNED_LEADS, always_valid_p, one_sided, sequential_test
from flywheel_pipeline.core.stats.sufficient import ArmStats

CONTROL = "champion"
PRIMARY = "weighted_score"
COST_PER_MEETING = "cost_per_meeting"  # ratio metric: y = generation cost, x = meeting (0/1), per lead
RATIOS = ("revenue_per_message", COST_PER_MEETING)
PROPORTIONS = ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
               "unsubscribe_rate")
GUARDRAILS = ("negative_reply_rate", "unsubscribe_rate")
# A guardrail rate is tested at the daily looks only once the smaller arm expects this many events
# at the pooled rate: the confidence sequence is asymptotic, and with a handful of unsubscribes in
# a 10% arm it rejected 3.5x its share (the test at the planned end, Fisher's, is exact).
MIN_INTERIM_EVENTS = 10
Verdict = Literal["promote", "rollback", "continue", "inconclusive"]
Step = Literal["harm", "efficacy"]
# Every metric the experiments compute (the primary, the proportions, the ratios).
MetricName = Literal["weighted_score", "reply_rate", "positive_reply_rate", "meeting_rate", "close_rate",
                     "negative_reply_rate", "unsubscribe_rate", "revenue_per_message", "cost_per_meeting"]
METRICS: tuple[MetricName, ...] = typing.get_args(MetricName)
STEPS = ("auto", "harm", "efficacy")


@dataclass(frozen=True)
class PolicyConfig:
    alpha: float = 0.05
    n_star: float = DEFAULT_PLANNED_LEADS  # planned leads of each rollout step, all arms together
    max_cost_increase: float = 0.25  # cost per meeting may rise by at most 25%
    srm_threshold: float = 0.001
    interim_share: float = 0.2  # of alpha, for the daily always-valid looks; the rest at the planned end
    primary_share: float = 0.6  # of the harm family's alpha, for the weighted score; guardrails share the rest
    tolerated_drop: float = 0.10  # a harm step moves on only if the weighted score is at most this much lower
    harm_to_detect: float = 0.40  # planning: a harm step is sized to find a weighted score this much lower...
    lift_to_detect: float = 0.25  # ...and the efficacy step to find it this much higher...
    target_power: float = 0.80  # ...with this chance by the planned end
    step: str = "auto"  # "harm", "efficacy", or "auto": efficacy when every arm has the same share
    cuped: bool = True  # adjust the weighted score by the pre-experiment covariate when the arms carry one

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if not self.n_star > 0:
            raise ValueError(f"n_star (planned leads per step) must be positive, got {self.n_star!r}")
        for name in ("interim_share", "primary_share"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {self.step!r}")
        if self.max_cost_increase < 0:
            raise ValueError("max_cost_increase cannot be negative")
        if not 0 <= self.tolerated_drop < 1:
            raise ValueError("tolerated_drop must be in [0, 1)")
        if not 0 < self.harm_to_detect < 1 or not self.lift_to_detect > 0 or not 0 < self.target_power < 1:
            raise ValueError("harm_to_detect must be in (0, 1), lift_to_detect positive, target_power in (0, 1)")

    @property
    def interim_alpha(self) -> float:
        return self.alpha * self.interim_share

    @property
    def final_alpha(self) -> float:
        return self.alpha * (1 - self.interim_share)


@dataclass
class MetricResult:
    metric: MetricName
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
    arm: str = "challenger"
    note: str = ""  # why a figure is missing (too few leads, no variance, no denominator yet)


@dataclass
class Decision:
    decision: Verdict  # the overall verdict (the challenger's, with one challenger)
    reason: str
    srm_p_value: float
    leads: dict[str, int]
    metrics: list[MetricResult] = field(default_factory=list)
    arms: dict[str, Verdict] = field(default_factory=dict)  # verdict per challenger
    reasons: dict[str, str] = field(default_factory=dict)  # reason per challenger
    step: Step = "harm"
    final: bool = False  # the step's planned size is reached: this verdict ends the step
    variance_reduction: float | None = None  # CUPED on the weighted score (share of variance removed)


@dataclass(frozen=True)
class _Hypothesis:
    arm: str
    label: str  # how the reason names it
    weight: float
    p_interim: float
    p_final: float


def _nan_result(name: str, arm: str, note: str) -> MetricResult:
    nan = float("nan")
    return MetricResult(name, nan, nan, nan, None, -math.inf, math.inf, nan, None, -math.inf, math.inf, nan, nan,
                        arm=arm, note=note)


def _report(name: str, arm: str, t: ArmStats, c: ArmStats, cfg: PolicyConfig, theta: float | None) -> MetricResult:
    """What a user reads about one metric of one challenger: estimates and intervals (Welch,
    gbstats' formulas); none of it decides."""
    try:
        if name in RATIOS:
            est = ratio_diff(t, c, alpha=cfg.alpha)
            rt, rc = ratio_mean_and_var(t)[0], ratio_mean_and_var(c)[0]
            return MetricResult(name, rt, rc, est.estimate, None if rc == 0 else rt / rc - 1, est.ci_low,
                                est.ci_high, est.p_value, None, -math.inf, math.inf, math.nan, math.nan, arm=arm)
        mt, mc = ((cuped.adjusted(t, theta), cuped.adjusted(c, theta)) if theta is not None
                  else (Moments.of(t), Moments.of(c)))
        est = welch_test(mt, mc, alpha=cfg.alpha, alternative="two-sided", relative=False)
        seq = sequential_test(mt, mc, alpha=cfg.alpha, n_star=cfg.n_star, relative=False)
    except ValueError as exc:
        return _nan_result(name, arm, str(exc))
    p_value, exact = est.p_value, False
    if name in PROPORTIONS and needs_exact_test(int(t.sum_y), t.n, int(c.sum_y), c.n):
        p_value, exact = fisher_exact(int(t.sum_y), t.n, int(c.sum_y), c.n), True
    rel = (mt.mean - mc.mean) / mc.raw_mean if mc.raw_mean > 0 else None
    bayes = gaussian_bayes(t, c)
    return MetricResult(name, t.mean, c.mean, est.estimate, rel, est.ci_low, est.ci_high, p_value, None,
                        seq.ci_low, seq.ci_high, bayes.chance_to_win, bayes.expected_loss, exact, arm=arm)


def _cost_rise_z(t: ArmStats, c: ArmStats, cfg: PolicyConfig) -> tuple[float, float, float] | None:
    """(log ratio of cost per meeting, its standard error, z against the allowed rise)."""
    if t.n < 2 or c.n < 2 or not t.sum_x or not c.sum_x:
        return None
    rt, vt = ratio_mean_and_var(t)
    rc, vc = ratio_mean_and_var(c)
    if rt <= 0 or rc <= 0:
        return None
    log_ratio = math.log(rt / rc)
    se = math.sqrt(vt / rt ** 2 + vc / rc ** 2)
    if se == 0:
        return None
    return log_ratio, se, (log_ratio - math.log1p(cfg.max_cost_increase)) / se


def _pooled_primary(t: ArmStats, c: ArmStats, theta: float | None) -> tuple[float, int]:
    """z of the weighted score, challenger minus champion, variance pooled under no difference
    (CUPED-adjusted with ``theta``)."""
    joint = t + c
    if theta is None:
        return null_pooled_z(Moments.of(t), Moments.of(c), joint.var), joint.n
    pooled = cuped.adjusted(joint, theta).var
    return null_pooled_z(cuped.adjusted(t, theta), cuped.adjusted(c, theta), pooled), joint.n


def _interim_p(z: float, n: int, worse_is_up: bool, cfg: PolicyConfig) -> float:
    """Always-valid one-sided p-value that the metric moved the tested way (z > 0: up)."""
    return one_sided(always_valid_p(z, n, cfg.interim_alpha, cfg.n_star), z > 0 if worse_is_up else z < 0)


def _upper_tail_p(name: str, t: ArmStats, c: ArmStats, z: float) -> float:
    """Fixed-horizon one-sided p-value that the challenger's rate is higher: Fisher's exact test
    for a proportion (a rare count in a small arm has a heavier upper tail than the normal: the
    pooled z rejected 1.5-2x its share at 10/90 with 15 expected negative replies), else the pooled z."""
    if name in PROPORTIONS:
        return fisher_exact(int(t.sum_y), t.n, int(c.sum_y), c.n, alternative="greater")
    return float(special.ndtr(-z))


def _harm_hypotheses(arm: str, stats: dict[str, dict[str, ArmStats]], cfg: PolicyConfig,
                     theta: float | None, final: bool) -> list[_Hypothesis]:
    """The one-sided harm tests of one challenger, each with its share of the family's alpha (the
    weighted score ``primary_share``, the guardrails the rest) and, at the planned end, its
    fixed-horizon p-value."""
    t, c = stats[PRIMARY][arm], stats[PRIMARY][CONTROL]
    n = t.n + c.n
    z, _ = _pooled_primary(t, c, theta)
    guards = []
    for name in GUARDRAILS:
        if name in stats:
            gt, gc = stats[name][arm], stats[name][CONTROL]
            joint = gt + gc
            gz = null_pooled_z(Moments.of(gt), Moments.of(gc), joint.var)
            informed = name not in PROPORTIONS or min(gt.n, gc.n) * joint.mean >= MIN_INTERIM_EVENTS
            guards.append((f"{name} higher", _interim_p(gz, n, True, cfg) if informed else 1.0,
                           _upper_tail_p(name, gt, gc, gz) if final else 1.0))
    rise = (_cost_rise_z(stats[COST_PER_MEETING][arm], stats[COST_PER_MEETING][CONTROL], cfg)
            if COST_PER_MEETING in stats else None)
    if rise is not None:
        log_ratio, _, cz = rise
        guards.append((f"cost_per_meeting up {math.expm1(log_ratio):+.0%} (limit {cfg.max_cost_increase:+.0%})",
                       _interim_p(cz, n, True, cfg), float(special.ndtr(-cz)) if final else 1.0))
    share = (1 - cfg.primary_share) / len(guards) if guards else 0.0
    return ([_Hypothesis(arm, "weighted score lower", cfg.primary_share, _interim_p(z, n, False, cfg),
                         float(special.ndtr(z)) if final else 1.0)]
            + [_Hypothesis(arm, label, share, p_interim, p_final) for label, p_interim, p_final in guards])


def _family(hypotheses: list[_Hypothesis], alpha_interim: float, alpha_final: float) -> list[tuple[_Hypothesis, str]]:
    """The rejected hypotheses, each with the test that rejected it."""
    if not hypotheses:
        return []
    weights = [h.weight for h in hypotheses]
    interim = weighted_holm([h.p_interim for h in hypotheses], weights, alpha_interim)
    final = weighted_holm([h.p_final for h in hypotheses], weights, alpha_final)
    return [(h, f"always-valid p={h.p_interim:.2g}" if i else f"p={h.p_final:.2g} at the planned end")
            for h, i, f in zip(hypotheses, interim, final, strict=True) if i or f]


def step_of(weights: dict[str, float], cfg: PolicyConfig) -> Step:
    if cfg.step != "auto":
        return cfg.step
    shares = list(weights.values())
    return "efficacy" if max(shares) - min(shares) <= 1e-9 * max(shares) else "harm"


def decide(stats: dict[str, dict[str, ArmStats]], weights: dict[str, float],
           cfg: PolicyConfig | None = None) -> Decision:
    """``stats[metric][arm]``: one arm ``champion`` (the control) and any number of challengers
    (``cost_per_meeting`` as a ratio metric enables the cost guardrail; the weighted score's
    ``sum_x``... a pre-experiment covariate); ``weights`` the configured traffic shares per arm."""
    cfg = cfg or PolicyConfig()
    if PRIMARY not in stats:
        raise ValueError(f"stats must include the primary metric {PRIMARY!r}")
    arms = list(weights)
    if CONTROL not in weights or len(arms) < 2:
        raise ValueError(f"weights need the control arm {CONTROL!r} and at least one challenger, got {arms}")
    for name, per_arm in stats.items():
        if set(per_arm) != set(arms):
            raise ValueError(f"{name}: arms {sorted(per_arm)} differ from the weights' arms {sorted(arms)}")
    if any(not (w > 0 and math.isfinite(w)) for w in weights.values()):
        raise ValueError(f"traffic shares must be positive and finite, got {weights}")
    challengers = [a for a in arms if a != CONTROL]
    step = step_of(weights, cfg)
    leads = {a: stats[PRIMARY][a].n for a in arms}
    total = sum(leads.values())
    srm = sample_ratio_mismatch([leads[a] for a in arms], [weights[a] for a in arms], cfg.srm_threshold)
    decision = Decision("continue", "", srm.p_value, leads, step=step)
    if min(leads.values()) < 2:
        reason = "not enough mature leads in every arm yet"
        return _overall(decision, {a: "continue" for a in challengers}, {a: reason for a in challengers})
    primary = stats[PRIMARY]
    theta = None
    if cfg.cuped and all(primary[a].has_x for a in arms):
        theta = cuped.theta(*primary.values())
        joint = sum((primary[a] for a in arms[1:]), primary[arms[0]])
        decision.variance_reduction = 1 - cuped.adjusted(joint, theta).var / joint.var if joint.var > 0 else None
    decision.metrics = [_report(name, arm, stats[name][arm], stats[name][CONTROL], cfg,
                                theta if name == PRIMARY else None)
                        for arm in challengers for name in stats]
    fixed = [r for r in decision.metrics if math.isfinite(r.p_value)]
    for arm in challengers:
        mine = [r for r in fixed if r.arm == arm]
        for r, p in zip(mine, holm([r.p_value for r in mine], cfg.alpha)[1], strict=True):
            r.p_adjusted = p
    if srm.mismatch:
        reason = (f"sample ratio mismatch: {leads} leads against weights {weights} (chi-square p={srm.p_value:.2g}); "
                  "the split is broken, so no result can be trusted")
        return _overall(decision, {a: "inconclusive" for a in challengers}, {a: reason for a in challengers})

    final = decision.final = total >= cfg.n_star
    # one family of harm tests over all challengers, one of "better" tests: weighted Holm shares
    # each family's alpha in proportion to the weights, so challengers share it equally
    harm = [h for a in challengers for h in _harm_hypotheses(a, stats, cfg, theta, final)]
    harmed = _family(harm, cfg.interim_alpha, cfg.final_alpha)
    better = []
    if step == "efficacy":
        for a in challengers:
            z, n = _pooled_primary(primary[a], primary[CONTROL], theta)
            better.append(_Hypothesis(a, "weighted score higher", 1.0, _interim_p(z, n, True, cfg),
                                      float(special.ndtr(-z)) if final else 1.0))
    won = {h.arm: how for h, how in _family(better, cfg.interim_alpha, cfg.final_alpha)}
    verdicts, reasons = {}, {}
    for a in challengers:
        report = next(r for r in decision.metrics if r.arm == a and r.metric == PRIMARY)
        adjusted = " CUPED-adjusted" if theta is not None else ""
        score = (f"weighted score {report.challenger:.4f} vs {report.champion:.4f}"
                 + (f" ({report.relative_lift:+.1%}{adjusted})" if report.relative_lift is not None else ""))
        hurt = [f"{h.label} ({how})" for h, how in harmed if h.arm == a]
        if hurt:
            verdicts[a], reasons[a] = "rollback", f"harm: {', '.join(hurt)}; {score}"
        elif a in won:
            verdicts[a], reasons[a] = "promote", f"{score}: significantly higher ({won[a]}) and no harm seen"
        elif final and step == "harm" and (report.relative_lift is None
                                           or report.relative_lift >= -cfg.tolerated_drop):
            verdicts[a], reasons[a] = "promote", (f"no harm seen in {total} leads (planned {cfg.n_star:.0f}) and "
                                                  f"{score}, not more than {cfg.tolerated_drop:.0%} lower: "
                                                  "moves on to the next step")
        elif final and step == "harm":
            verdicts[a], reasons[a] = "inconclusive", (
                f"no harm proven in {total} leads (planned {cfg.n_star:.0f}), but {score} is more than "
                f"{cfg.tolerated_drop:.0%} lower: the champion keeps the traffic")
        elif final:
            verdicts[a], reasons[a] = "inconclusive", (f"reached the planned {cfg.n_star:.0f} leads without a "
                                                       f"significant difference; {score}")
        else:
            what = "no harm seen yet" if step == "harm" else "no significant difference yet"
            verdicts[a], reasons[a] = "continue", f"{total} of {cfg.n_star:.0f} planned leads, {what}; {score}"
    return _overall(decision, verdicts, reasons)


def _overall(decision: Decision, verdicts: dict[str, str], reasons: dict[str, str]) -> Decision:
    """The overall verdict: the challenger's with one challenger; with several, promote if one is
    (the best), rollback if all are, continue while one continues, else inconclusive."""
    decision.arms, decision.reasons = verdicts, reasons
    if len(verdicts) == 1:
        (arm, verdict), = verdicts.items()
        decision.decision, decision.reason = verdict, reasons[arm]
        return decision
    promoted = [a for a, v in verdicts.items() if v == "promote"]
    if promoted:
        scores = {r.arm: r.challenger for r in decision.metrics if r.metric == PRIMARY}
        best = max(promoted, key=lambda a: scores.get(a, -math.inf))
        decision.decision, decision.reason = "promote", f"{best}: {reasons[best]}"
    else:
        values = set(verdicts.values())
        decision.decision = ("rollback" if values == {"rollback"} else "continue" if "continue" in values
                             else "inconclusive")
        decision.reason = "; ".join(f"{a}: {v} ({reasons[a]})" for a, v in verdicts.items())
    return decision


# A step is never planned smaller than this (the normal approximations and the sample-ratio
# check need some size), and without a usable baseline it is planned at DEFAULT_PLANNED_LEADS.
MIN_PLANNED_LEADS = 1_000


def _step_question(weights: dict[str, float], cfg: PolicyConfig) -> tuple[str, float, float, float, float]:
    """(step, the change it is sized for, its test's alpha, challenger share, control share)."""
    step = step_of(weights, cfg)
    challengers = [a for a in weights if a != CONTROL]
    total = sum(weights.values())
    alpha = cfg.final_alpha * (cfg.primary_share if step == "harm" else 1) / len(challengers)
    lift = -cfg.harm_to_detect if step == "harm" else cfg.lift_to_detect
    return step, lift, alpha, weights[challengers[0]] / total, weights[CONTROL] / total


def planned_leads(baseline: ArmStats, weights: dict[str, float], cfg: PolicyConfig) -> int:
    """The leads (all arms) a step is planned for, before it starts, from the champion's weighted
    score per lead: enough that its final test finds the change it exists for (a harm step: a
    score ``harm_to_detect`` lower; the efficacy step: ``lift_to_detect`` higher) with
    ``target_power``. Fixed for the step, so the planned end does not depend on its own results."""
    step, lift, alpha, share, control = _step_question(weights, cfg)
    if baseline.n < 100 or baseline.mean <= 0 or baseline.var <= 0:
        return DEFAULT_PLANNED_LEADS
    return max(MIN_PLANNED_LEADS, planning.leads_needed(mean=baseline.mean, var=baseline.var, share=share,
                                                        control_share=control, lift=lift, alpha=alpha,
                                                        target_power=cfg.target_power))


@dataclass(frozen=True)
class StepPlan:
    """What a step needs and can see, from the champion's baseline and the traffic so far."""
    step: str
    planned_leads: float
    leads_so_far: int  # reached so far (their outcomes mature later)
    leads_per_day: float | None
    days_to_planned_end: float | None  # days of traffic until it reaches the planned leads; None without traffic
    change: float  # the change the step is sized for: negative at a harm step
    power_at_planned_end: float | None
    mde_at_planned_end: float | None  # smallest relative change found with target_power by the planned end


def plan_step(baseline: ArmStats, weights: dict[str, float], cfg: PolicyConfig, *, leads_so_far: int = 0,
              leads_per_day: float | None = None) -> StepPlan:
    """Days to the planned end (``cfg.n_star``) at the current traffic, and the power and
    detectable change of the step's final test there."""
    step, lift, alpha, share, control = _step_question(weights, cfg)
    days = max(0.0, cfg.n_star - leads_so_far) / leads_per_day if leads_per_day else None
    power_at = mde = None
    if baseline.n >= 2 and baseline.mean > 0 and baseline.var > 0:
        common = dict(mean=baseline.mean, var=baseline.var, n=cfg.n_star, share=share, control_share=control,
                      alpha=alpha)
        power_at = planning.power(lift=lift, **common)
        mde = planning.minimum_detectable_lift(target_power=cfg.target_power, **common)
    return StepPlan(step, cfg.n_star, leads_so_far, leads_per_day, days, lift, power_at, mde)
