"""Which message features move outcome rates: stratified effects, Benjamini–Hochberg, guidance.

Pure: it works from per-(organization, task type, feature, value) sufficient statistics
(messages and events per metric; ``warehouse/outcome_drivers.py`` computes them in SQL).

For a feature value and a metric, the value's messages are compared with *the rest of that
feature* (every other value) **within each stratum**, (organization, task type), and the strata
are combined (the all-task-types rows compare within both):

* ``estimate``: the Mantel–Haenszel risk difference (the rate difference in rate units, e.g.
  +0.03 = three more replies per hundred messages), sum_k w_k (p1_k - p0_k) / sum_k w_k with
  w_k = n1_k n0_k / N_k. An organization with no messages on one side adds nothing.
* ``ci_low``/``ci_high``: Wald interval from the Greenland–Robins / Sato (1989) variance of the
  MH risk difference, which is consistent both with many small strata and with a few large ones.
* ``p_value``: the Cochran–Mantel–Haenszel test of no association given organization (1 df,
  no continuity correction; the same statistic as statsmodels' ``StratifiedTable.test_null_odds``).
* ``p_adjusted``: Benjamini–Hochberg across every test of the run (all features, values,
  metrics and the per-task-type guidance tests); ``significant`` = tested and p_adjusted <= q.
* The minimum-sample gate: a value with fewer than ``min_messages`` messages (or a rest with
  fewer), or fewer than ``min_events`` events on both sides together, is reported (n, rate)
  but not tested (``tested`` false, no p-value, never significant).

What it cannot do: the data are observational. Stratifying by organization removes differences
between organizations' base rates; it does not remove confounding inside an organization
(campaigns, lead lists, features that travel together). See docs/learning.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from scipy.stats import chi2, norm

METRICS: dict[str, str] = {"reply_rate": "replied", "positive_reply_rate": "positive_reply",
                           "meeting_rate": "meeting_booked"}
ALL_TASKS = "all"
BODY_FEATURE = "body_words"
# body-length buckets in words, [low, high) (high None: open); warehouse/outcome_drivers.py buckets with these
BODY_BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 50), (50, 100), (100, 150), (150, 200), (200, None))


# the judges' dimension scores (each in [0, 1]) and overall score / 100 as driver features, in fixed
# bands [low, high) (the last closed); warehouse/outcome_drivers.py bands with these
DIMENSION_BANDS: tuple[tuple[str, float, float], ...] = (("low", 0.0, 1 / 3), ("mid", 1 / 3, 2 / 3),
                                                         ("high", 2 / 3, 1.0))


def bucket_label(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high - 1}"


@dataclass(frozen=True)
class Cell:
    """Sufficient statistics of one (organization, task type, feature, value): messages and events."""
    organization_id: str
    task_type: str
    feature: str
    value: str
    n: int
    events: dict[str, int]  # metric -> messages with the event


@dataclass(frozen=True)
class DriversConfig:
    q: float = 0.05  # the false discovery rate BH controls
    alpha: float = 0.05  # the (unadjusted) interval level
    min_messages: int = 200
    min_events: int = 10
    method: str = "bh"  # "bh" (Benjamini–Hochberg) or "by" (Benjamini–Yekutieli, any dependence)


@dataclass
class Driver:
    task_type: str
    feature: str
    value: str
    metric: str
    n: int
    events: int
    rate: float
    rest_n: int
    rest_rate: float | None
    organizations: int
    tested: bool
    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    significant: bool = False

    def row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Stratified:
    estimate: float
    variance: float
    p_value: float


def mh_risk_difference(strata: Sequence[tuple[int, int, int, int]]) -> tuple[float, float]:
    """MH risk difference and its Greenland–Robins/Sato variance over strata (y1, n1, y0, n0)."""
    w_sum = num = p_sum = q_sum = 0.0
    for y1, n1, y0, n0 in strata:
        big_n = n1 + n0
        if n1 == 0 or n0 == 0:
            continue
        w_sum += n1 * n0 / big_n
        num += (y1 * n0 - y0 * n1) / big_n
        p_sum += (n1 * n1 * y0 - n0 * n0 * y1 + n1 * n0 * (n0 - n1) / 2) / big_n ** 2
        q_sum += (y1 * (n0 - y0) + y0 * (n1 - y1)) / (2 * big_n)
    if w_sum == 0:
        return math.nan, math.nan
    rd = num / w_sum
    return rd, (rd * p_sum + q_sum) / w_sum ** 2


def cmh_test(strata: Sequence[tuple[int, int, int, int]]) -> float:
    """Two-sided p-value of the Cochran–Mantel–Haenszel test (no continuity correction)."""
    dev = var = 0.0
    for y1, n1, y0, n0 in strata:
        big_n = n1 + n0
        if n1 == 0 or n0 == 0 or big_n < 2:
            continue
        m1 = y1 + y0
        dev += y1 - n1 * m1 / big_n
        var += n1 * n0 * m1 * (big_n - m1) / (big_n ** 2 * (big_n - 1))
    if var <= 0:
        return 1.0
    return float(chi2.sf(dev * dev / var, 1))


def stratified_effect(strata: Sequence[tuple[int, int, int, int]]) -> Stratified:
    rd, variance = mh_risk_difference(strata)
    return Stratified(rd, variance, cmh_test(strata))


def adjust(p_values: Sequence[float], method: str = "bh") -> list[float]:
    """Benjamini–Hochberg (or Benjamini–Yekutieli) adjusted p-values, in the input order."""
    m = len(p_values)
    if m == 0:
        return []
    if method not in ("bh", "by"):
        raise ValueError(f"unknown adjustment {method!r}")
    scale = sum(1 / i for i in range(1, m + 1)) if method == "by" else 1.0
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p_values[i] * m * scale / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


Stratum = tuple[str, str]  # (organization, task type)


def _collapse(cells: Iterable[Cell]) -> dict[tuple[str, str], dict[str, dict[Stratum, tuple[int, dict[str, int]]]]]:
    """(task scope, feature) -> value -> stratum -> (n, events). A stratum is (organization, task
    type): the ALL_TASKS scope sums task types but compares within each organization *and* task
    type, so a task type with a higher base rate that uses a value more cannot make it look good."""
    out: dict = defaultdict(lambda: defaultdict(dict))

    def add(scope: str, cell: Cell) -> None:
        by_stratum = out[(scope, cell.feature)][cell.value]
        stratum = (cell.organization_id, cell.task_type or "unknown")
        n, events = by_stratum.get(stratum, (0, {}))
        by_stratum[stratum] = (n + cell.n, {m: events.get(m, 0) + cell.events.get(m, 0) for m in METRICS})

    for cell in cells:
        add(ALL_TASKS, cell)
        if cell.feature == BODY_FEATURE:  # the guidance: body length per task type
            add(cell.task_type or "unknown", cell)
    return out


def drivers(cells: Iterable[Cell], config: DriversConfig = DriversConfig()) -> list[Driver]:
    """Every (task scope, feature, value, metric): n, rate, the stratified effect against the rest of
    the feature, its interval, p-value, BH-adjusted p-value and significance."""
    z = norm.ppf(1 - config.alpha / 2)
    results: list[Driver] = []
    for (scope, feature), values in sorted(_collapse(cells).items()):
        orgs = sorted({stratum for by_org in values.values() for stratum in by_org})  # (organization, task type)
        totals = {org: (sum(values[v].get(org, (0, {}))[0] for v in values),
                        {m: sum(values[v].get(org, (0, {}))[1].get(m, 0) for v in values) for m in METRICS})
                  for org in orgs}
        for value in sorted(values):
            by_org = values[value]
            n = sum(c[0] for c in by_org.values())
            rest_n = sum(totals[o][0] for o in orgs) - n
            for metric in METRICS:
                strata = []
                for org in orgs:
                    n1, ev1 = by_org.get(org, (0, {}))
                    y1 = ev1.get(metric, 0)
                    n0 = totals[org][0] - n1
                    y0 = totals[org][1][metric] - y1
                    strata.append((y1, n1, y0, n0))
                events = sum(s[0] for s in strata)
                rest_events = sum(s[2] for s in strata)
                informative = [s for s in strata if s[1] and s[3]]
                d = Driver(scope, feature, value, metric, n, events, events / n if n else math.nan, rest_n,
                           rest_events / rest_n if rest_n else None, len({o[0] for o in by_org if by_org[o][0]}),
                           tested=(n >= config.min_messages and rest_n >= config.min_messages
                                   and events + rest_events >= config.min_events and bool(informative)))
                if d.tested:
                    eff = stratified_effect(informative)
                    se = math.sqrt(max(eff.variance, 0.0))
                    d.estimate, d.ci_low, d.ci_high = eff.estimate, eff.estimate - z * se, eff.estimate + z * se
                    d.p_value = eff.p_value
                results.append(d)
    tested = [d for d in results if d.tested]
    for d, p in zip(tested, adjust([d.p_value for d in tested], config.method)):
        d.p_adjusted = p
        d.significant = p <= config.q
    return results


def _word_range(label: str) -> list[int | None]:
    for low, high in BODY_BUCKETS:
        if bucket_label(low, high) == label:
            return [low, None if high is None else high - 1]
    return [None, None]


def guidance(results: Sequence[Driver], metric: str = "reply_rate", *, include_all: bool = False) -> dict:
    """Per task type, the body length of the best-performing messages, for the prompt optimizer.

    ``best``: among the task type's body-length buckets whose reply rate is significantly higher
    than the rest of the task type's messages (stratified by organization, BH across the run),
    the one with the largest stratified effect (``estimate``; the crude rate mixes organizations);
    None when no bucket is. ``avoid``: buckets significantly lower.
    Word ranges are inclusive, [low, high] (high None: no upper bound). ``include_all``: also the
    scope ``all`` (every task type together), for a template that serves every task type."""
    out: dict = {"metric": metric, "feature": BODY_FEATURE,
                 "definition": "best = the body-length bucket with the largest effect (estimate) among those "
                               "significantly above the rest "
                               "of the task type (MH risk difference by organization, BH-adjusted); avoid = "
                               "buckets significantly below", "task_types": {}}
    for scope in sorted({d.task_type for d in results if d.feature == BODY_FEATURE
                         and (include_all or d.task_type != ALL_TASKS)}):
        rows = [d for d in results if d.task_type == scope and d.feature == BODY_FEATURE and d.metric == metric]
        n = sum(d.n for d in rows)
        overall = sum(d.events for d in rows) / n if n else None
        better = [d for d in rows if d.significant and d.estimate > 0]
        worse = [d for d in rows if d.significant and d.estimate < 0]
        best = max(better, key=lambda d: d.estimate) if better else None  # the largest effect, not the crude rate
        out["task_types"][scope] = {
            "messages": n, "overall_rate": overall,
            "best": None if best is None else {
                "bucket": best.value, "word_range": _word_range(best.value), "rate": best.rate, "n": best.n,
                "estimate": best.estimate, "ci": [best.ci_low, best.ci_high], "p_adjusted": best.p_adjusted},
            "avoid": [{"bucket": d.value, "word_range": _word_range(d.value), "rate": d.rate,
                       "estimate": d.estimate, "ci": [d.ci_low, d.ci_high]} for d in worse]}
    return out
