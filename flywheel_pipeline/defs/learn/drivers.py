"""outcome_drivers: which message features move reply, positive-reply and meeting rates
(docs/learning.md says what the table can and cannot claim)."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.drivers import ALL_TASKS, DIMENSION_BANDS, DriversConfig, drivers, guidance
from flywheel_pipeline.core.learn_plots import forest
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.learn.judgements import message_judgements
from flywheel_pipeline.defs.learn.tracked import log_learn_table
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MlflowResource, WarehouseResource
from flywheel_pipeline.warehouse.outcome_drivers import feature_cells, write_drivers


class OutcomeDriversConfig(dg.Config):
    q: float = Field(0.05, description="False discovery rate controlled by Benjamini–Hochberg across the run.")
    alpha: float = Field(0.05, description="Level of the reported (unadjusted) confidence intervals.")
    min_messages: int = Field(200, description="A value (or the rest of its feature) with fewer mature messages "
                                               "is reported but not tested.")
    min_events: int = Field(10, description="Fewer events (value and rest together) than this: not tested.")


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _rows(results, alpha: float, limit: int | None = None) -> str:
    rows = [(d.task_type, d.feature, d.value, d.metric, d.n, _fmt(d.rate), _fmt(d.rest_rate),
             f"{d.estimate:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]" if d.tested else "not tested (n<min)",
             f"{d.p_adjusted:.2g}" if d.p_adjusted is not None else "", "yes" if d.significant else "")
            for d in results[:limit]]
    return md_table(["task type", "feature", "value", "metric", "n", "rate", "rest rate",
                     f"difference vs rest, by organization and task type ({1 - alpha:.0%} CI)", "p (BH)",
                     "significant"], rows)


def _forest(results, metric: str, alpha: float):
    rows = [(f"{d.feature} = {d.value}", d.estimate, d.ci_low, d.ci_high, d.significant) for d in results
            if d.tested and d.task_type == ALL_TASKS and d.metric == metric]
    return forest(rows, f"{metric}: difference against the rest of the feature ({1 - alpha:.0%} CI; "
                        "dark = significant, BH)", "rate difference, within organization and task type")


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "mlflow"},
          deps=[outcome_labels, message_judgements],
          description="Which message features (framework, tone, model, prompt template and version, body and "
                      "subject length, a question in the subject, personalization, send hour and weekday, the "
                      "judges' banded dimension scores) move reply, positive-reply and meeting rates: per value, n, "
                      "rate, the Mantel–Haenszel rate difference against the rest of the feature within "
                      "organization and task type with its interval, the CMH "
                      "p-value adjusted by Benjamini–Hochberg across the run, a minimum-sample gate, significant; "
                      "and the body-length guidance per task type. Observational: see docs/learning.md.")
def outcome_drivers(context: dg.AssetExecutionContext, config: OutcomeDriversConfig,
                    warehouse: WarehouseResource, mlflow: MlflowResource) -> dg.MaterializeResult:
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
    significant_md = (_rows(significant, config.alpha) if significant else
                      f"No feature value moves an outcome rate significantly (BH at q = {config.q}).")
    judged = [d for d in overall if "/" in d.feature]
    figures = {f"drivers_{m}": _forest(results, m, config.alpha) for m in ("reply_rate", "meeting_rate")} \
        if tested else {}
    logged = log_learn_table(context, mlflow, "outcome_drivers", [d.row() for d in results],
                             significant_md + "\n\n" + _rows(overall, config.alpha),
                             {"rows": len(results), "tested": len(tested), "significant": len(significant)},
                             figures=figures, tables={"guidance": [advice]})
    return dg.MaterializeResult(metadata={
        "significant_drivers": dg.MetadataValue.md(significant_md),
        "rows": len(results), "tested": len(tested), "significant": len(significant),
        "messages": sum(c.n for c in cells if c.feature == "framework"),
        "fdr_q": config.q, "min_messages": config.min_messages,
        "reply_rate_by_feature": dg.MetadataValue.md(_rows([d for d in overall if "/" not in d.feature], config.alpha)),
        "reply_rate_by_judge_dimension": dg.MetadataValue.md(
            (_rows(judged, config.alpha) if judged else "No judged message.") + "\n\nBands of each dimension score "
            "(and score / 100): " + ", ".join(f"{label} [{low:.2f}, {high:.2f})"
                                                for label, low, high in DIMENSION_BANDS)),
        "guidance": dg.MetadataValue.json(advice),
        "caveat": "Observational: differences within organizations and task types, not causal effects "
                  "(docs/learning.md).",
        **logged})
