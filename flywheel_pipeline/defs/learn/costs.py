"""What each model costs per message and per outcome, and what the cheapest model that is not
worse would have cost: the ``cost_analysis`` asset (queries in warehouse/cost_analysis.py, the
statistics in core/costs.py and core/stats/fieller.py)."""

import math
from decimal import Decimal

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.core.costs import SavingsConfig
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MlflowResource, WarehouseResource
from flywheel_pipeline.paths import catalog_path
from flywheel_pipeline.tracking import log_table, run_url
from flywheel_pipeline.warehouse.cost_analysis import build_cost_analysis, cost_rows, registry_models, totals


class CostAnalysisConfig(dg.Config):
    min_quality_messages: int = Field(200, description="Mature messages of a task type a model needs before its "
                                                       "quality counts as measured (savings analysis).")
    max_quality_drop: float = Field(0.05, description="'Not worse': the one-sided lower bound of the candidate's "
                                                      "relative lift in weighted score is at least minus this.")
    alpha: float = Field(0.05, description="Intervals are 1 - alpha (non-inferiority bound one-sided).")


def _usd(value: Decimal | None) -> str:
    return "" if value is None else f"{value.quantize(Decimal('0.01')):,}"


def _per(row: dict, outcome: str) -> str:
    estimate = row[f"cost_per_{outcome}"]
    if estimate is None and row[f"cost_per_{outcome}_low"] is None:
        return ""
    low, high = row[f"cost_per_{outcome}_low"], row[f"cost_per_{outcome}_high"]
    point = "n/a" if estimate is None else f"{estimate:.4f}"
    return f"{point} [{low:.4f}, {'inf' if not math.isfinite(high) else f'{high:.4f}'}]"


def _tables(rows: list[dict], alpha: float) -> tuple[str, str]:
    costs = md_table(
        ["organization", "task type", "model", "messages", "computed", "unpriced", "cost USD", "per message",
         f"per reply ({1 - alpha:.0%} CI)", "per positive reply", "per meeting", "per deal", "tokens p50/p95 (in; out)",
         "latency ms p50/p95"],
        [(r["organization_id"], r["task_type"], r["model_id"], r["messages"], r["computed_cost_messages"],
          r["unpriced_messages"], _usd(r["cost_usd"]),
          "" if r["cost_per_message"] is None else f"{r['cost_per_message']:.6f}",
          _per(r, "reply"), _per(r, "positive_reply"), _per(r, "meeting"), _per(r, "deal"),
          f"{r['prompt_tokens_p50']}/{r['prompt_tokens_p95']}; {r['completion_tokens_p50']}/{r['completion_tokens_p95']}",
          f"{r['latency_ms_p50']}/{r['latency_ms_p95']}") for r in rows])
    by_scope: dict[tuple, dict] = {}
    for r in rows:
        scope = by_scope.setdefault((r["organization_id"], r["task_type"]), {"cost": Decimal(0), "savings": Decimal(0),
                                                                              "moves": []})
        scope["cost"] += r["savings_basis_cost_usd"] or Decimal(0)
        if r["savings_usd"] is not None and r["savings_usd"] > 0:
            scope["savings"] += r["savings_usd"]
            scope["moves"].append(f"{r['model_id']} -> {r['savings_model']}")
    savings = md_table(["organization", "task type", "cost USD (messages with tokens)", "savings USD", "moves"],
                       [(org, task, _usd(s["cost"]), _usd(s["savings"]), "; ".join(s["moves"]) or "none")
                        for (org, task), s in sorted(by_scope.items(), key=lambda kv: tuple(map(str, kv[0])))])
    return costs, savings


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "mlflow"}, deps=[outcome_labels],
          description="Per model x task type x organization: messages, exact cost (given, or computed from tokens and "
                      "the model catalog; unpriced messages counted), cost per message, reply, positive reply, meeting "
                      "and deal over mature messages with Fieller intervals, token and latency percentiles, and what "
                      "the cheapest catalog model whose measured quality is not worse would have cost.")
def cost_analysis(context: dg.AssetExecutionContext, config: CostAnalysisConfig, warehouse: WarehouseResource,
                  mlflow: MlflowResource) -> dg.MaterializeResult:
    override = catalog_path()
    catalog = load_catalog(override)
    cfg = SavingsConfig(config.min_quality_messages, config.max_quality_drop, config.alpha)
    with warehouse.connect() as con:
        catalog = catalog.with_registry(registry_models(con))
        row_count = build_cost_analysis(con, catalog, cfg, config.alpha)
        rows = cost_rows(con)
        total = totals(con)
    if total["unpriced_messages"]:
        unpriced = sorted({str(r["model_id"]) for r in rows if r["unpriced_messages"]})
        context.log.warning(f"{total['unpriced_messages']} messages have no cost_usd and no catalog price for their "
                            f"model and tokens (left out of every cost): {', '.join(unpriced)}; add them to {override}")
    costs_md, savings_md = _tables(rows, config.alpha)
    metadata: dict[str, object] = {}
    try:
        run = log_table(mlflow.tracking_uri, "cost_analysis", rows, costs_md + "\n\n" + savings_md,
                        {"cost_usd": float(total["cost_usd"] or 0), "savings_usd": float(total["savings_usd"]),
                         "unpriced_messages": total["unpriced_messages"]})
        metadata["mlflow_run"] = dg.MetadataValue.url(run_url(mlflow.tracking_uri, run.experiment_id, run.run_id,
                                                              mlflow.ui_url))
        metadata["mlflow_run_id"] = run.run_id
    except Exception as exc:  # noqa: BLE001 - the table stands without MLflow; say so
        context.log.warning(f"cost_analysis not logged to MLflow: {exc}")
    return dg.MaterializeResult(metadata={
        "rows": row_count, "messages": total["messages"],
        "computed_cost_messages": total["computed_cost_messages"], "unpriced_messages": total["unpriced_messages"],
        "cost_usd": _usd(total["cost_usd"]), "savings_usd": _usd(total["savings_usd"]),
        "catalog": dg.MetadataValue.md("\n".join(f"- `{s}`" for s in catalog.sources)
                                       + f"\n\n{len(catalog)} models; prices must be checked (see the file's header)"),
        "costs": dg.MetadataValue.md(costs_md),
        "savings": dg.MetadataValue.md(
            savings_md + "\n\nSavings: each row's messages with tokens repriced on the cheapest catalog model whose "
            f"weighted score on the task type is not worse (one-sided {1 - config.alpha:.0%} lower bound of the relative "
            f"lift >= -{config.max_quality_drop:.0%}); only models with at least {config.min_quality_messages} mature "
            "messages of that task type (measured outcomes, every organization) qualify. Observational: models "
            "served different leads and organizations."),
        **metadata})
