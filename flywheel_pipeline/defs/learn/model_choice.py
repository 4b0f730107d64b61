"""model_choice_stats: what the routing strategies rank by (quality with its pessimistic bound,
cost per message, latency per model, task type and organization), as a warehouse table and as the
published snapshot ``$FLYWHEEL_HOME/model_stats.json`` that ``GET /route``, ``GET /models``, the
``/api/v1`` metric endpoints and ``flywheel models`` read (queries in warehouse/model_stats.py,
the snapshot in core/model_snapshot.py, the strategies in core/model_choice.py)."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.core.model_choice import (ALL_ORGANIZATIONS, DEFAULT_ALPHA, DEFAULT_QUALITY_METRIC,
                                                 QUALITY_METRICS)
from flywheel_pipeline.core.model_snapshot import build_snapshot
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.learn.costs import cost_analysis
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, WarehouseResource
from flywheel_pipeline.paths import model_stats_path
from flywheel_pipeline.routing import write_model_stats
from flywheel_pipeline.warehouse.cost_analysis import registry_models
from flywheel_pipeline.warehouse.model_stats import (build_model_choice_stats, cost_analysis_rows, recent_executions,
                                                     stats_rows, task_tokens)


class ModelChoiceConfig(dg.Config):
    quality_metric: str = Field(DEFAULT_QUALITY_METRIC, description=f"What quality means: one of "
                                                                    f"{', '.join(QUALITY_METRICS)}.")
    alpha: float = Field(DEFAULT_ALPHA, description="The quality's pessimistic bound is the one-sided 1 - alpha lower "
                                                    "confidence bound (Wilson for rates).")
    executions_per_organization: int = Field(200, ge=0, description="Recent messages per organization published "
                                                                   "for GET /api/v1/executions.")


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "json"}, deps=[cost_analysis],
          description="Per model x task type x organization (and pooled over organizations and task types): mature "
                      "messages, reply, positive-reply and meeting rates, the quality metric with its pessimistic "
                      "(lower) bound, cost per message and per outcome, latency; published with the cost analysis "
                      "and each organization's recent messages as $FLYWHEEL_HOME/model_stats.json for GET /route "
                      "strategies, GET /models and the /api/v1 metric endpoints.")
def model_choice_stats(context: dg.AssetExecutionContext, config: ModelChoiceConfig,
                       warehouse: WarehouseResource) -> dg.MaterializeResult:
    if config.quality_metric not in QUALITY_METRICS:
        raise dg.Failure(f"quality_metric {config.quality_metric!r} is not one of {', '.join(QUALITY_METRICS)}")
    with warehouse.connect() as con:
        count = build_model_choice_stats(con)
        rows = stats_rows(con)
        snapshot = build_snapshot(
            rows, generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            metric=config.quality_metric, alpha=config.alpha, registry_models=registry_models(con),
            tokens=task_tokens(con), costs=cost_analysis_rows(con),
            executions=recent_executions(con, config.executions_per_organization))
    path = write_model_stats(snapshot, model_stats_path())
    pooled = snapshot["models"].get(ALL_ORGANIZATIONS, {})
    table = md_table(
        ["task type", "model", "mature", f"{config.quality_metric} [lower, upper]", "cost/message", "latency p50 ms"],
        [(task, model, m["mature_messages"],
          "" if m["quality"] is None else f"{m['quality']:.4f} [{m['quality_low']:.4f}, {m['quality_high']:.4f}]",
          "" if m.get("cost_per_message") is None else f"{m['cost_per_message']:.6f}",
          "" if m.get("latency_ms_p50") is None else f"{m['latency_ms_p50']:.0f}")
         for task, models in sorted(pooled.items()) for model, m in sorted(models.items())])
    if not rows:
        context.log.warning("no messages yet: the strategies rank by the catalog alone")
    return dg.MaterializeResult(metadata={
        "rows": count, "path": dg.MetadataValue.path(str(path)), "quality_metric": config.quality_metric,
        "organizations": len([o for o in snapshot["models"] if o != ALL_ORGANIZATIONS]),
        "every_organization": dg.MetadataValue.md(table)})
