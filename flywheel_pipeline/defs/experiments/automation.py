"""The experiments job and the sensor that evaluates running experiments (on unless
FLYWHEEL_AUTOMATION=off)."""

import hashlib
from datetime import datetime, timezone

import dagster as dg

from flywheel_pipeline.defs.automation_switch import sensor_status
from flywheel_pipeline.routing import running_experiments

EXPERIMENTS_JOB_NAME = "experiments"

experiments_job = dg.define_asset_job(
    EXPERIMENTS_JOB_NAME,
    selection=dg.AssetSelection.assets("ab_test_results", "experiment_decisions", "model_leaderboard",
                                       "flywheel_velocity"),
    description="Evaluate running experiments and apply their decisions (rollout, promotion, rollback).",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "experiments"},
)


@dg.sensor(job=experiments_job, minimum_interval_seconds=6 * 3600, default_status=sensor_status(),
           description="Evaluates running experiments on a cadence (at most one run per experiment and day); "
                       "skips with the reason when no challenger is routed.")
def experiment_sensor(context: dg.SensorEvaluationContext):
    running = running_experiments()
    if not running:
        return dg.SkipReason("no experiment is running (no challenger in routing.json)")
    day = datetime.now(timezone.utc).date().isoformat()
    key = hashlib.sha256("|".join(running).encode()).hexdigest()[:12]
    return dg.RunRequest(run_key=f"experiments-{day}-{key}", tags={"flywheel/experiments": ",".join(running)})
