"""Every delivered message judged by the heuristic scorer of its task family."""

import dagster as dg

from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.learn.tracked import log_learn_table
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MlflowResource, WarehouseResource
from flywheel_pipeline.warehouse.message_judgements import JUDGE_SUMMARY_HEADER, judge_new_messages, judge_summary


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
