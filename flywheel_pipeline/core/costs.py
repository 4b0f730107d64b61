"""Cost analysis, pure: from per (model, task type, organization) sums (warehouse/cost_analysis.py)
the costs per outcome with Fieller intervals, and the savings analysis.

Savings: for a row, the cheapest catalog model whose measured quality on the row's task type is
not worse than the row's model's, and what the row's messages would have cost on it (their own
prompt and completion tokens at its prices). "Not worse" is non-inferiority on the weighted
outcome score per mature message (core/outcome_score.py), measured over every organization's
messages of the task type: the one-sided (1 - alpha) lower bound of the candidate's relative lift
over the row's model (core/stats ``relative_lift``, delta method, Welch) is at least
``-max_quality_drop``. Only models with at least ``min_quality_messages`` mature messages of that
task type qualify, the row's model too: a model without measured outcomes is never proposed, and
a row whose own model has none gets no proposal. The row's own model is priced at what was paid
for its messages (their ``cost_usd``, or tokens at the catalog's prices where none was given), the
candidates at the catalog's list prices: when what was paid is already the cheapest, the row's own
model is the answer (saving 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from flywheel_pipeline.core.catalog import Catalog
from flywheel_pipeline.core.stats.fieller import RatioInterval, fieller_ratio
from flywheel_pipeline.core.stats.frequentist import relative_lift
from flywheel_pipeline.core.stats.sufficient import ArmStats

OUTCOMES = ("reply", "positive_reply", "meeting", "deal")

# A message's own cost_usd must lie in [0, MAX_MESSAGE_COST_USD]; ingestion quarantines the rest. Sums
# are DECIMAL(38, 12) (warehouse/cost_analysis.py): up to 1e26 USD, so 1e20 messages at the maximum fit.
MAX_MESSAGE_COST_USD = 1_000_000


@dataclass(frozen=True)
class SavingsConfig:
    min_quality_messages: int = 200
    max_quality_drop: float = 0.05  # relative, of the weighted score
    alpha: float = 0.05


@dataclass(frozen=True)
class Quality:
    """A model's mature messages of one task type (all organizations): the weighted score's sums."""
    model_id: str
    task_type: str | None
    messages: int
    score_sum: float
    score_sum_squares: float

    @property
    def stats(self) -> ArmStats:
        return ArmStats(self.messages, self.score_sum, self.score_sum_squares)


@dataclass(frozen=True)
class Savings:
    model_id: str | None  # the cheapest not-worse model (may be the row's own); None: no proposal
    cost_usd: Decimal | None  # the basis messages on it
    basis_cost_usd: Decimal | None  # the same messages' actual cost
    savings_usd: Decimal | None
    reason: str


def cost_per(cost_sum: float, cost_sq: float, n: int, events: int, cost_on_events: float,
             alpha: float = 0.05) -> RatioInterval:
    """Total cost / events over ``n`` mature priced messages (events are 0/1 per message)."""
    return fieller_ratio(n, cost_sum, cost_sq, float(events), float(events), cost_on_events, alpha)


def not_worse(candidate: Quality, current: Quality, cfg: SavingsConfig) -> bool:
    if candidate.model_id == current.model_id:
        return True
    try:
        lift = relative_lift(candidate.stats, current.stats, alpha=cfg.alpha, alternative="greater")
    except ValueError:
        return False
    return math.isfinite(lift.ci_low) and lift.ci_low >= -cfg.max_quality_drop


def cheapest_not_worse(model_id: str | None, task_type: str | None, prompt_tokens: int, completion_tokens: int,
                       basis_cost: Decimal | None, basis_messages: int, quality: dict[tuple[str, str | None], Quality],
                       catalog: Catalog, cfg: SavingsConfig) -> Savings:
    """The savings of one row: its basis messages (those with a cost and both token counts)
    repriced on every qualifying model, the row's own at what was paid; the cheapest wins."""
    if basis_messages == 0 or basis_cost is None:
        return Savings(None, None, None, None, "no message with a cost and both token counts")
    current = quality.get((model_id, task_type)) if model_id is not None else None
    if current is None or current.messages < cfg.min_quality_messages:
        return Savings(None, None, basis_cost, None,
                       f"{model_id} has fewer than {cfg.min_quality_messages} mature messages of this task type")
    options = []
    for (candidate_id, candidate_task), q in quality.items():
        if candidate_task != task_type or q.messages < cfg.min_quality_messages:
            continue
        if candidate_id == model_id:  # the row's own model at what was paid, not at its list price
            options.append((basis_cost, False, candidate_id))
            continue
        price = catalog.price(candidate_id)
        if price is None or not not_worse(q, current, cfg):
            continue
        cost = (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1_000_000
        options.append((cost, True, candidate_id))
    cost, _, best = min(options)  # the row's own model is always an option (ties: the row's own model, then id)
    if best == model_id:
        cheapest = min((o for o in options if o[2] != model_id), default=None)
        reason = ("no not-worse model costs less than what was paid" if cheapest is None else
                  f"no not-worse model costs less than what was paid ({cheapest[2]} would cost {cheapest[0]})")
        return Savings(model_id, basis_cost, basis_cost, Decimal(0), reason)
    return Savings(best, cost, basis_cost, basis_cost - cost, f"not worse than {model_id}, cheaper")
