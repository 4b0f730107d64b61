"""outcome_drivers: which message features move reply, positive-reply and meeting rates
(docs/learning.md says what the table can and cannot claim)."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.drivers import ALL_TASKS, DriversConfig, drivers, guidance
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, WarehouseResource
from flywheel_pipeline.warehouse.outcome_drivers import feature_cells, write_drivers


class OutcomeDriversConfig(dg.Config):
    q: float = Field(0.05, description="False discovery rate controlled by Benjamini–Hochberg across the run.")
    alpha: float = Field(0.05, description="Level of the reported (unadjusted) confidence intervals.")
    min_messages: int = Field(200, description="A value (or the rest of its feature) with fewer mature messages "
                                               "is reported but not tested.")
    min_events: int = Field(10, description="Fewer events (value and rest together) than this: not tested.")


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _rows(results, limit: int | None = None) -> str:
    rows = [(d.task_type, d.feature, d.value, d.metric, d.n, _fmt(d.rate), _fmt(d.rest_rate),
             f"{d.estimate:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]" if d.tested else "not tested (n<min)",
             f"{d.p_adjusted:.2g}" if d.p_adjusted is not None else "", "yes" if d.significant else "")
            for d in results[:limit]]
    return md_table(["task type", "feature", "value", "metric", "n", "rate", "rest rate",
                     "difference vs rest, by organization (95% CI)", "p (BH)", "significant"], rows)


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[outcome_labels],
          description="Which message features (framework, tone, model, prompt template and version, body and "
                      "subject length, a question in the subject, personalization, send hour and weekday) move "
                      "reply, positive-reply and meeting rates: per value, n, rate, the Mantel–Haenszel rate "
                      "difference against the rest of the feature within organizations with its interval, the CMH "
                      "p-value adjusted by Benjamini–Hochberg across the run, a minimum-sample gate, significant; "
                      "and the body-length guidance per task type. Observational: see docs/learning.md.")
def outcome_drivers(context: dg.AssetExecutionContext, config: OutcomeDriversConfig,
                    warehouse: WarehouseResource) -> dg.MaterializeResult:
    settings = DriversConfig(q=config.q, alpha=config.alpha, min_messages=config.min_messages,
                             min_events=config.min_events)
    computed_at = datetime.now(timezone.utc).replace(tzinfo=None)
    with warehouse.connect() as con:
        cells = feature_cells(con)
        results = drivers(cells, settings)
        write_drivers(con, results, computed_at)
    advice = guidance(results)
    significant = sorted((d for d in results if d.significant),
                         key=lambda d: (d.task_type != ALL_TASKS, d.p_adjusted, -abs(d.estimate)))
    tested = [d for d in results if d.tested]
    overall = [d for d in results if d.task_type == ALL_TASKS and d.metric == "reply_rate"]
    if not cells:
        context.log.warning("no mature, delivered messages: outcome_drivers is empty")
    return dg.MaterializeResult(metadata={
        "significant_drivers": dg.MetadataValue.md(_rows(significant) if significant else
                                                   "No feature value moves an outcome rate significantly "
                                                   f"(BH at q = {config.q})."),
        "rows": len(results), "tested": len(tested), "significant": len(significant),
        "messages": sum(c.n for c in cells if c.feature == "framework"),
        "fdr_q": config.q, "min_messages": config.min_messages,
        "reply_rate_by_feature": dg.MetadataValue.md(_rows(overall)),
        "guidance": dg.MetadataValue.json(advice),
        "caveat": "Observational: differences within organizations, not causal effects (docs/learning.md)."})
