"""Routing strategies, pure: rank candidate models for a task from *measured* outcomes and the
catalog, under constraints, and say why in words (``GET /route``, ``choose_model``).

* **quality**: an outcome rate (``reply_rate`` by default; ``positive_reply_rate``,
  ``meeting_rate`` or the ``weighted_score``) judged by its *pessimistic* bound: the one-sided
  lower confidence bound (Wilson for rates, normal for the weighted score) over the model's mature
  messages. A model with little data has a wide interval and a low bound, so it is not picked on
  luck; a model with no outcomes at all counts as quality 0.
* **cost**: the measured cost per message (``cost_analysis``: given or computed from tokens), or
  the catalog price of the task's typical tokens when nothing is measured; the cost per positive
  outcome is judged pessimistically too: cost per message / quality lower bound (infinite when
  the bound is 0).
* **speed**: the measured median latency, or the catalog's typical latency.

Strategies:

============== ==================================================================================
best_quality   highest quality lower bound (ties: cheaper per message)
best_cost      lowest pessimistic cost per positive outcome (ties: cheaper per message)
balanced       the cheapest per message among the models whose quality lower bound is within
               ``tolerance`` (10%) of the best bound
fastest        lowest latency (ties: higher quality bound)
============== ==================================================================================

Constraints (every candidate that breaks one is left out, and the reasons say which): minimum
quality (the lower bound), maximum cost per message, maximum latency, required capabilities,
minimum context window. The fallback chain is the next models in ranking order, those of a
provider not yet in the chain first (a provider outage should not take the fallback down too).

Bad input is a :class:`ChoiceError` with a reason code, words, and (when a constraint leaves
nothing) the closest model and what it misses.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel_pipeline.core.stats.frequentist import wilson_interval

STRATEGIES = ("best_quality", "best_cost", "balanced", "fastest")
QUALITY_METRICS = ("reply_rate", "positive_reply_rate", "meeting_rate", "weighted_score")
DEFAULT_QUALITY_METRIC = "reply_rate"
DEFAULT_ALPHA = 0.01  # the quality bound is one-sided at 1 - alpha (99%: tests/warehouse/test_model_choice.py)
DEFAULT_TOLERANCE = 0.10  # balanced: within 10% of the best quality bound
DEFAULT_FALLBACKS = 3
MIN_ORG_MESSAGES = 200  # an organization's own measurements are used from this many mature messages
MIN_COST_MESSAGES = 20  # measured cost per message used from this many priced messages
MIN_LATENCY_MESSAGES = 20  # measured latency used from this many messages with a latency
# a message's tokens when the task has no measured ones (the catalog's "~400-token outreach e-mail")
DEFAULT_PROMPT_TOKENS = 400
DEFAULT_COMPLETION_TOKENS = 250
ALL_ORGANIZATIONS = "*"
ALL_TASKS = "all"


class ChoiceError(ValueError):
    """Bad input to a choice: ``code`` is one of ``unknown_strategy``, ``unknown_model``,
    ``no_candidates``, ``unsatisfiable``, ``unknown_metric``; ``closest`` the model that comes
    nearest to qualifying (``unsatisfiable``) or the nearest known id (``unknown_model``)."""

    def __init__(self, code: str, detail: str, closest: str | None = None):
        super().__init__(detail)
        self.code, self.detail, self.closest = code, detail, closest


def quality_bounds(metric: str, n: int, successes: int, score_sum: float, score_sum_squares: float,
                   alpha: float = DEFAULT_ALPHA) -> tuple[float | None, float, float]:
    """(estimate, one-sided lower bound, upper bound) of the metric over ``n`` mature messages:
    a rate's Wilson bounds, the weighted score's normal bounds (clipped to [0, 1]); (None, 0, 1)
    without messages."""
    if metric not in QUALITY_METRICS:
        raise ChoiceError("unknown_metric", f"unknown quality metric {metric!r}; known: {', '.join(QUALITY_METRICS)}")
    if n <= 0:
        return None, 0.0, 1.0
    if metric != "weighted_score":
        low, high = wilson_interval(successes, n, 2 * alpha)
        return successes / n, low, high
    mean = score_sum / n
    var = max(score_sum_squares / n - mean * mean, 0.0) * n / max(n - 1, 1)
    from scipy.stats import norm
    half = norm.ppf(1 - alpha) * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@dataclass(frozen=True)
class Measured:
    """One model's measured outcomes in one scope (an organization, or every one: ``*``)."""
    scope: str
    mature_messages: int
    quality: float | None
    quality_low: float
    quality_high: float
    priced_messages: int = 0
    cost_per_message: float | None = None
    latency_messages: int = 0
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measured:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Candidate:
    """A catalog model with what is known about it for one task and organization."""
    model_id: str
    provider: str
    catalog_cost_per_message: float  # the task's typical tokens at the catalog's prices
    typical_latency_ms: float | None = None
    context_window: int | None = None
    capabilities: tuple[str, ...] = ()
    measured: Measured | None = None

    @property
    def quality_low(self) -> float:
        return self.measured.quality_low if self.measured else 0.0

    @property
    def quality(self) -> float | None:
        return self.measured.quality if self.measured else None

    @property
    def cost_measured(self) -> bool:
        return bool(self.measured and self.measured.cost_per_message is not None
                    and self.measured.priced_messages >= MIN_COST_MESSAGES)

    @property
    def cost_per_message(self) -> float:
        return self.measured.cost_per_message if self.cost_measured else self.catalog_cost_per_message  # type: ignore[union-attr,return-value]

    @property
    def cost_per_outcome_high(self) -> float:
        """Pessimistic cost per positive outcome: cost per message / quality lower bound."""
        return self.cost_per_message / self.quality_low if self.quality_low > 0 else math.inf

    @property
    def latency_measured(self) -> bool:
        return bool(self.measured and self.measured.latency_ms_p50 is not None
                    and self.measured.latency_messages >= MIN_LATENCY_MESSAGES)

    @property
    def latency_ms(self) -> float:
        if self.latency_measured:
            return float(self.measured.latency_ms_p50)  # type: ignore[union-attr,arg-type]
        return float(self.typical_latency_ms) if self.typical_latency_ms is not None else math.inf


@dataclass(frozen=True)
class Constraints:
    min_quality: float | None = None  # on the quality lower bound
    max_cost_per_message: float | None = None  # USD
    max_latency_ms: float | None = None
    capabilities: tuple[str, ...] = ()
    min_context_window: int | None = None

    def violations(self, c: Candidate) -> list[tuple[str, float]]:
        """What ``c`` breaks, in words, each with how far it is off (relative; 1 per missing capability)."""
        out: list[tuple[str, float]] = []
        if self.min_quality is not None and c.quality_low < self.min_quality:
            out.append((f"quality lower bound {c.quality_low:.4f} < min_quality {self.min_quality:g}",
                        (self.min_quality - c.quality_low) / max(self.min_quality, 1e-12)))
        if self.max_cost_per_message is not None and c.cost_per_message > self.max_cost_per_message:
            out.append((f"cost per message ${c.cost_per_message:.6f} > max_cost_per_message "
                        f"${self.max_cost_per_message:g}",
                        (c.cost_per_message - self.max_cost_per_message) / max(self.max_cost_per_message, 1e-12)))
        if self.max_latency_ms is not None and c.latency_ms > self.max_latency_ms:
            off = (c.latency_ms - self.max_latency_ms) / max(self.max_latency_ms, 1e-12)
            out.append((f"latency {_ms(c.latency_ms)} > max_latency_ms {self.max_latency_ms:g}",
                        off if math.isfinite(off) else 1e6))
        missing = [cap for cap in self.capabilities if cap not in c.capabilities]
        if missing:
            out.append((f"lacks capability {', '.join(missing)}", float(len(missing))))
        if self.min_context_window is not None and (c.context_window or 0) < self.min_context_window:
            out.append((f"context window {c.context_window or 'unknown'} < min_context_window {self.min_context_window}",
                        (self.min_context_window - (c.context_window or 0)) / self.min_context_window))
        return out

    def describe(self) -> str:
        parts = [f"{k}={v:g}" for k, v in (("min_quality", self.min_quality),
                                            ("max_cost_per_message", self.max_cost_per_message),
                                            ("max_latency_ms", self.max_latency_ms),
                                            ("min_context_window", self.min_context_window)) if v is not None]
        if self.capabilities:
            parts.append(f"capabilities={','.join(self.capabilities)}")
        return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Choice:
    model_id: str
    strategy: str
    reasons: list[str]
    fallback: list[str]
    ranked: list[Candidate] = field(default_factory=list)


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if math.isfinite(value) else "unknown"


def _money(value: float) -> str:
    return f"${value:.6f}" if math.isfinite(value) else "unbounded"


def rank(candidates: Sequence[Candidate], strategy: str, tolerance: float = DEFAULT_TOLERANCE) -> list[Candidate]:
    """The candidates in the strategy's order, best first (ties by model id)."""
    if strategy == "best_quality":
        return sorted(candidates, key=lambda c: (-c.quality_low, c.cost_per_message, c.model_id))
    if strategy == "best_cost":
        return sorted(candidates, key=lambda c: (c.cost_per_outcome_high, c.cost_per_message, -c.quality_low,
                                                 c.model_id))
    if strategy == "fastest":
        return sorted(candidates, key=lambda c: (c.latency_ms, -c.quality_low, c.cost_per_message, c.model_id))
    if strategy == "balanced":
        best = max((c.quality_low for c in candidates), default=0.0)
        near = [c for c in candidates if c.quality_low >= (1 - tolerance) * best]
        rest = [c for c in candidates if c.quality_low < (1 - tolerance) * best]
        return (sorted(near, key=lambda c: (c.cost_per_message, -c.quality_low, c.model_id))
                + rank(rest, "best_quality"))
    raise unknown_strategy(strategy)


def unknown_strategy(strategy: str) -> ChoiceError:
    return ChoiceError("unknown_strategy", f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}",
                       _closest(strategy, STRATEGIES))


def fallback_chain(ranked: Sequence[Candidate], length: int = DEFAULT_FALLBACKS,
                   chosen: tuple[str, str | None] | None = None) -> list[str]:
    """The fallback chain after the chosen model (``chosen`` = (model id, provider); default the
    first of ``ranked``): models of providers not yet in the chain first, in ranking order, then
    the others in ranking order; at most ``length``."""
    if chosen is None:
        if not ranked:
            return []
        chosen = (ranked[0].model_id, ranked[0].provider)
    rest = [c for c in ranked if c.model_id != chosen[0]]
    if length <= 0:
        return []
    providers = {chosen[1]}
    chain: list[Candidate] = []
    for c in rest:
        if c.provider not in providers:
            chain.append(c)
            providers.add(c.provider)
    chain += [c for c in rest if c not in chain]
    return [c.model_id for c in chain[:length]]


def _closest(name: str, known: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.4)
    return match[0] if match else None


def _quality_words(c: Candidate, metric: str, alpha: float) -> str:
    if c.measured is None or c.measured.mature_messages == 0:
        return f"no measured {metric} yet (counted as 0)"
    scope = "every organization" if c.measured.scope == ALL_ORGANIZATIONS else c.measured.scope
    return (f"{metric} {c.quality:.4f}, {1 - alpha:.0%} lower bound {c.quality_low:.4f} "
            f"over {c.measured.mature_messages:,} mature messages of {scope}")


def _cost_words(c: Candidate) -> str:
    source = "measured" if c.cost_measured else "catalog price of typical tokens"
    return f"{_money(c.cost_per_message)} per message ({source})"


def _latency_words(c: Candidate) -> str:
    source = "measured median" if c.latency_measured else "catalog typical"
    return f"latency {_ms(c.latency_ms)} ({source})"


def explain(chosen: Candidate, runner_up: Candidate | None, strategy: str, metric: str, alpha: float,
            tolerance: float, best_quality: float) -> list[str]:
    """The strategy's reasons for ``chosen`` in words."""
    q = _quality_words(chosen, metric, alpha)
    if strategy == "best_quality":
        first = f"best_quality: {chosen.model_id} has the highest pessimistic {metric}: {q}"
    elif strategy == "best_cost":
        first = (f"best_cost: {chosen.model_id} has the lowest pessimistic cost per positive outcome, "
                 f"{_money(chosen.cost_per_outcome_high)} ({_cost_words(chosen)} / quality lower bound); {q}")
    elif strategy == "fastest":
        first = f"fastest: {chosen.model_id} has the lowest {_latency_words(chosen)}"
    else:
        first = (f"balanced: {chosen.model_id} is the cheapest ({_cost_words(chosen)}) of the models whose quality "
                 f"lower bound is within {tolerance:.0%} of the best ({best_quality:.4f}); {q}")
    reasons = [first, f"{chosen.model_id}: {_cost_words(chosen)}, {_latency_words(chosen)}"]
    if runner_up is not None:
        reasons.append(f"next: {runner_up.model_id} ({_quality_words(runner_up, metric, alpha)}; "
                       f"{_cost_words(runner_up)}; {_latency_words(runner_up)})")
    return reasons


def choose(candidates: Sequence[Candidate], strategy: str, constraints: Constraints = Constraints(), *,
           metric: str = DEFAULT_QUALITY_METRIC, alpha: float = DEFAULT_ALPHA, tolerance: float = DEFAULT_TOLERANCE,
           fallbacks: int = DEFAULT_FALLBACKS) -> Choice:
    """The strategy's model among ``candidates`` that meet ``constraints``, its reasons and fallback chain."""
    if strategy not in STRATEGIES:
        raise unknown_strategy(strategy)
    if not candidates:
        raise ChoiceError("no_candidates", "the candidate list is empty")
    eligible, excluded = [], []
    for c in candidates:
        broken = constraints.violations(c)
        if broken:
            excluded.append((c, broken))
        else:
            eligible.append(c)
    if not eligible:
        nearest, broken = min(excluded, key=lambda e: (sum(off for _, off in e[1]), len(e[1]), e[0].model_id))
        raise ChoiceError("unsatisfiable",
                          f"no candidate of {len(candidates)} meets the constraints ({constraints.describe()}); "
                          f"closest: {nearest.model_id} ({'; '.join(w for w, _ in broken)})", nearest.model_id)
    ranked = rank(eligible, strategy, tolerance)
    chosen = ranked[0]
    best_quality = max(c.quality_low for c in eligible)
    reasons = explain(chosen, ranked[1] if len(ranked) > 1 else None, strategy, metric, alpha, tolerance,
                      best_quality)
    unmeasured = [c.model_id for c in eligible if c.measured is None or c.measured.mature_messages == 0]
    if unmeasured and strategy in ("best_quality", "best_cost", "balanced"):
        reasons.append(f"{len(unmeasured)} of {len(eligible)} candidates have no measured outcomes for this task and "
                       "count as quality 0 until an experiment measures them")
    if excluded:
        reasons.append("excluded by the constraints: " + "; ".join(f"{c.model_id} ({', '.join(w for w, _ in b)})"
                                                                   for c, b in excluded[:5])
                       + (f"; and {len(excluded) - 5} more" if len(excluded) > 5 else ""))
    chain = fallback_chain(ranked, fallbacks)
    if chain:
        reasons.append(f"fallback if {chosen.provider} fails: {' -> '.join(chain)}")
    return Choice(chosen.model_id, strategy, reasons, chain, ranked)


def unknown_model(model_id: str, known: Iterable[str]) -> ChoiceError:
    closest = _closest(model_id, known)
    hint = f"; did you mean {closest}?" if closest else ""
    return ChoiceError("unknown_model", f"unknown model {model_id!r}: not in the model catalog{hint}", closest)
