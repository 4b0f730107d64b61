"""The retrain job, its weekly schedule and the sensor that retrains when enough new outcomes
have matured (both on unless FLYWHEEL_AUTOMATION=off)."""

import json
import os

import dagster as dg

from flywheel_pipeline.defs.automation_switch import schedule_status, sensor_status
from flywheel_pipeline.defs.datasets.assets import DATASETS_GROUP
from flywheel_pipeline.defs.experiments.assets import EXPERIMENTS_GROUP
from flywheel_pipeline.defs.leaderboard.assets import LEADERBOARD_GROUP
from flywheel_pipeline.defs.resources import WarehouseResource
from flywheel_pipeline.defs.training.assets import TRAINING_GROUP
from flywheel_pipeline.warehouse import model_registry as registry
from flywheel_pipeline.warehouse.leaderboard import training_ready_outcomes

RETRAIN_JOB_NAME = "retrain"

retrain_job = dg.define_asset_job(
    RETRAIN_JOB_NAME,
    selection=dg.AssetSelection.groups(DATASETS_GROUP, TRAINING_GROUP, EXPERIMENTS_GROUP, LEADERBOARD_GROUP),
    description="Rebuild training data and exports, fine-tune, register and log to MLflow, evaluate offline, "
                "route a share of traffic to the new challenger and refresh the leaderboard.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "retrain"},
)

weekly_retrain_schedule = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 2 * * 1",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description="Retrain every Monday at 02:00 UTC.",
)


@dg.sensor(job=retrain_job, minimum_interval_seconds=3600, default_status=sensor_status(),
           description="Starts a retrain when at least min_new_examples (100) mature, training-ready outcomes "
                       "exist beyond the latest model's dataset; one run per outcome count (run_key).")
def new_outcomes_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    min_new = int(os.environ.get("FLYWHEEL_MIN_NEW_EXAMPLES", "100"))
    try:
        with warehouse.connect(read_only=True) as con:
            ready, trained = training_ready_outcomes(con), registry.latest_positives(con)
    except Exception as exc:  # noqa: BLE001 - a busy or missing warehouse is a reason to skip, not to fail
        return dg.SkipReason(f"warehouse not readable now ({type(exc).__name__}: {str(exc)[:120]})")
    launched = json.loads(context.cursor) if context.cursor else {}
    new = ready - trained
    if new < min_new:
        return dg.SkipReason(f"{new} new training-ready outcomes beyond the latest model's {trained}; "
                             f"waiting for {min_new}")
    if launched.get("ready") == ready:
        return dg.SkipReason(f"a retrain for {ready} training-ready outcomes was already requested")
    context.update_cursor(json.dumps({"ready": ready, "trained": trained}))
    return dg.RunRequest(run_key=f"retrain-{ready}", tags={"flywheel/trigger": "new_outcomes_sensor",
                                                          "flywheel/new_outcomes": str(new)})
