"""Every delivered message judged: by the heuristic scorer of its task family (``message_judgements``)
and, when configured, by the LLM judge (``message_llm_judgements``, same table)."""

from decimal import Decimal

import dagster as dg

from flywheel_pipeline.core.catalog import load_catalog
from flywheel_pipeline.core.llm_judge import CRITERIA, Budget, JudgeMisconfigured, LLMJudge
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.learn.tracked import log_learn_table
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MessageJudgeResource, MlflowResource, WarehouseResource
from flywheel_pipeline.paths import catalog_path
from flywheel_pipeline.warehouse.message_judgements import (
    JUDGE_SUMMARY_HEADER,
    LLMRun,
    judge_new_messages,
    judge_summary,
    judge_with_llm,
)


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "python", "mlflow"}, deps=[outcome_labels],
          description="Every delivered message scored once per judge and criteria version (0-100 with dimension "
                      "scores) by the offline heuristic scorer of its task family (generic for unknown task "
                      "types); incremental, and a text already judged under the same criteria is copied.")
def message_judgements(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                       mlflow: MlflowResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        run = judge_new_messages(con, progress=context.log.info)
        summary = judge_summary(con)
    summary_md = md_table(JUDGE_SUMMARY_HEADER, summary)
    logged = log_learn_table(context, mlflow, "message_judgements",
                             [dict(zip(JUDGE_SUMMARY_HEADER, row)) for row in summary], summary_md,
                             {"judged_now": run.judged, "reused_now": run.reused})
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(sum(int(r[2]) for r in summary)),
        "judged_now": run.judged, "reused_now": run.reused,
        "judged_now_by_judge": dg.MetadataValue.json(run.by_judge),
        "judges": dg.MetadataValue.md(summary_md), **logged})


def _run_table(run: LLMRun) -> str:
    judges = sorted({*run.judged, *run.reused, *run.unjudged})
    return md_table(["judge", "judged now", "reused now", "unjudged now (by reason)"],
                    [(j, run.judged.get(j, 0), run.reused.get(j, 0),
                      ", ".join(f"{r}: {n}" for r, n in sorted(run.unjudged.get(j, {}).items())) or "0")
                     for j in judges])


# Not in the warehouse pool: it waits on the judge endpoint for minutes and holds no lock meanwhile
# (a short connection per page of contents, like fine_tuned_model and offline_evaluation).
@dg.asset(group_name=LEARN_GROUP, kinds={"duckdb", "python"}, deps=[message_judgements],
          description="When configured (FLYWHEEL_MESSAGE_JUDGE=geval), every delivered message judged by deepeval's "
                      "G-Eval with the criteria of its task family (generic otherwise) through an OpenAI-compatible "
                      "endpoint: overall score 0-100, criteria scores, strengths, weaknesses, suggestions; once per "
                      "content and criteria version, within a per-run budget in USD. Off by default.")
def message_llm_judgements(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                           message_judge: MessageJudgeResource) -> dg.MaterializeResult:
    if not message_judge.enabled:
        return dg.MaterializeResult(metadata={
            "enabled": False,
            "note": "the LLM judge is off (set FLYWHEEL_MESSAGE_JUDGE=geval with FLYWHEEL_JUDGE_MODEL, "
                    "FLYWHEEL_JUDGE_API_KEY and a budget; see README)"})
    settings = message_judge.settings()
    catalog = load_catalog(catalog_path())
    price = catalog.price(settings.model)
    if price is None:
        raise dg.Failure(f"the judge model {settings.model!r} has no price in the model catalog "
                         f"({', '.join(catalog.sources)}), so its budget cannot be kept; add it to {catalog_path()}")
    budget = Budget(Decimal(str(message_judge.budget_usd)))
    try:
        run = judge_with_llm(warehouse.connect, LLMJudge(settings, price, budget),
                             concurrency=message_judge.concurrency, page_size=message_judge.page_size,
                             progress=context.log.info)
    except JudgeMisconfigured as exc:
        raise dg.Failure(str(exc)) from None
    if run.stopped_by_budget:
        context.log.warning(f"the LLM judge stopped at its budget: spent {run.spent_usd:.6f} of {run.budget_usd} USD; "
                            f"{run.left} messages left unjudged for the next run")
    elif run.left:
        context.log.warning(f"{run.left} messages left unjudged after transient errors (timeouts, connection or "
                            "HTTP errors): the next run tries them again")
    unjudged = {j: dict(r) for j, r in run.unjudged.items()}
    return dg.MaterializeResult(metadata={
        "enabled": True, "model": settings.model,
        "criteria_versions": dg.MetadataValue.json({c.family: c.version for c in CRITERIA.values()}),
        "judged_now": sum(run.judged.values()), "reused_now": sum(run.reused.values()),
        "unjudged_now": sum(n for r in run.unjudged.values() for n in r.values()),
        "unjudged_now_by_judge_and_reason": dg.MetadataValue.json(unjudged),
        "calls": run.calls, "spent_usd": f"{run.spent_usd:.6f}", "budget_usd": f"{run.budget_usd}",
        "stopped_by_budget": run.stopped_by_budget, "left_for_next_run": run.left,
        "price": f"{price.input_per_million} / {price.output_per_million} USD per million input / output tokens "
                 f"({price.source})",
        "this_run": dg.MetadataValue.md(_run_table(run))})
