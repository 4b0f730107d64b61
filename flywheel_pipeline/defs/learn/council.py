"""council_judges: which judges judge_calibration trusts, published for POST /council."""

import dagster as dg

from flywheel_pipeline import paths
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.learn.calibration import judge_calibration
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, WarehouseResource
from flywheel_pipeline.warehouse.council import publish_judge_trust


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "json"}, deps=[judge_calibration],
          description="judge_calibration's rows (judge, metric, task type, AUC with its interval, trusted) published "
                      "as $FLYWHEEL_HOME/judges.json, which POST /council reads to decide whether its judge is "
                      "trusted (the service never opens the warehouse). Without calibration the file says why, and "
                      "the council says its judge is an untrusted fallback.")
def council_judges(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        snapshot = publish_judge_trust(con, paths.judges_path())
    judges = snapshot["judges"]
    if snapshot["reason"]:
        context.log.warning(f"no judge calibration to publish: {snapshot['reason']}; the council's judge is untrusted")
    trusted = sorted({f"{j['judge']} ({j['task_type']})" for j in judges if j["trusted"]})
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(paths.judges_path())),
        "judges": len(judges), "trusted": dg.MetadataValue.json(trusted),
        "reason": snapshot["reason"] or "",
        "calibration": dg.MetadataValue.md(md_table(
            ["judge", "metric", "task_type", "n", "auc", "auc_low", "auc_high", "trusted"],
            [(j["judge"], j["metric"], j["task_type"], j["n"], j["auc"], j["auc_low"], j["auc_high"], j["trusted"])
             for j in judges]))})
