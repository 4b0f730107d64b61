"""Jobs, the landing-zone sensor and the daily label refresh schedule."""

import hashlib
import json
import os
import time

import dagster as dg

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.defs.datasets import DATASETS_GROUP
from flywheel_pipeline.defs.experiments import EXPERIMENTS_GROUP
from flywheel_pipeline.defs.training import TRAINING_GROUP
from flywheel_pipeline.defs.ingest import INGEST_GROUP
from flywheel_pipeline.defs.outcomes import OUTCOMES_GROUP
from flywheel_pipeline.defs.resources import LandingZoneResource, WarehouseResource

REFRESH_JOB_NAME = "refresh"

refresh_job = dg.define_asset_job(
    REFRESH_JOB_NAME,
    selection=dg.AssetSelection.groups(INGEST_GROUP, OUTCOMES_GROUP),
    description="Ingest whatever the landing zone holds, classify replies and refresh outcome labels. "
                "Launched by the landing sensor, the daily schedule and `flywheel refresh`.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "refresh"},
)


DATASETS_JOB_NAME = "datasets"

datasets_job = dg.define_asset_job(
    DATASETS_JOB_NAME,
    selection=dg.AssetSelection.groups(DATASETS_GROUP),
    description="Redact new mature messages, select training examples and preference pairs, and write "
                "the validated SFT and DPO exports.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "datasets"},
)


@dg.sensor(job=refresh_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Launches a refresh when landing files appear. It only lists file names and sizes "
                       "(never opens the warehouse); exactly-once ingestion is the warehouse's job.")
def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
    current = landing_zone.fingerprint(landing.root)
    previous = json.loads(context.cursor) if context.cursor else {}
    changed = sorted(s for s, digest in current.items() if previous.get(s) != digest and not digest.startswith("0:"))
    if not changed:
        return dg.SkipReason("no new landing files")
    state = json.dumps(current, sort_keys=True)
    context.update_cursor(state)
    return dg.RunRequest(
        run_key=f"landing-{hashlib.sha256(state.encode()).hexdigest()[:20]}",
        tags={"flywheel/trigger": "landing_sensor", "flywheel/sources": ",".join(changed)},
    )


daily_refresh_schedule = dg.ScheduleDefinition(
    name="daily_label_refresh",
    job=refresh_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Maturity moves with the clock even without new events: relabel daily at 03:00 UTC.",
)


RETRAIN_JOB_NAME = "retrain"

retrain_job = dg.define_asset_job(
    RETRAIN_JOB_NAME,
    selection=dg.AssetSelection.groups(DATASETS_GROUP, TRAINING_GROUP, EXPERIMENTS_GROUP),
    description="Rebuild training data and exports, fine-tune, register and log to MLflow, evaluate offline "
                "and route a share of traffic to the new challenger.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "retrain"},
)

weekly_retrain_schedule = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_job,
    cron_schedule="0 2 * * 1",
    execution_timezone="UTC",
    description="Retrain every Monday at 02:00 UTC.",
)


def training_ready_outcomes(warehouse: WarehouseResource, min_quality_score: float = 0.6) -> tuple[int, int]:
    """(mature training-ready outcomes now, positives in the latest model's dataset)."""
    with warehouse.connect(read_only=True) as con:
        ready = con.execute("SELECT count(*) FROM message_labels WHERE is_mature AND NOT bounced "
                            "AND quality_score >= ?", [min_quality_score]).fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        trained = 0
        if "model_registry" in tables:
            row = con.execute("SELECT positives FROM model_registry WHERE status <> 'failed' "
                              "ORDER BY created_at DESC LIMIT 1").fetchone()
            trained = int(row[0] or 0) if row else 0
    return int(ready), trained


@dg.sensor(job=retrain_job, minimum_interval_seconds=3600,
           description="Starts a retrain when at least min_new_examples (100) mature, training-ready outcomes "
                       "exist beyond the latest model's dataset; one run per outcome count (run_key).")
def new_outcomes_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    min_new = int(os.environ.get("FLYWHEEL_MIN_NEW_EXAMPLES", "100"))
    try:
        ready, trained = training_ready_outcomes(warehouse)
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


@dg.run_failure_sensor(name="run_failure_sensor", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Records every failed run where users look: the log, a JSON line under "
                                   "$FLYWHEEL_HOME/alerts/failures.jsonl and an optional webhook.")
def run_failure_sensor(context: dg.RunFailureSensorContext):
    from flywheel_pipeline import paths

    record = {"run_id": context.dagster_run.run_id, "job": context.dagster_run.job_name,
              "error": context.failure_event.message, "at": time.time()}
    context.log.error(f"run {record['run_id']} of {record['job']} failed: {record['error']}")
    alerts = paths.alerts_path()
    alerts.parent.mkdir(parents=True, exist_ok=True)
    with open(alerts, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    url = os.environ.get("FLYWHEEL_ALERT_WEBHOOK_URL")
    if url:
        import httpx

        try:
            httpx.post(url, json=record, timeout=10)
        except httpx.HTTPError as exc:
            context.log.warning(f"alert webhook {url} failed: {exc}")


EXPERIMENTS_JOB_NAME = "experiments"

experiments_job = dg.define_asset_job(
    EXPERIMENTS_JOB_NAME,
    selection=dg.AssetSelection.assets("ab_test_results", "experiment_decisions", "model_leaderboard",
                                       "flywheel_velocity"),
    description="Evaluate running experiments and apply their decisions (rollout, promotion, rollback).",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "experiments"},
)


@dg.sensor(job=experiments_job, minimum_interval_seconds=6 * 3600,
           description="Evaluates running experiments on a cadence (at most one run per experiment and day); "
                       "skips with the reason when no challenger is routed.")
def experiment_sensor(context: dg.SensorEvaluationContext):
    from datetime import datetime, timezone

    from flywheel_pipeline.routing import load_routing

    running = sorted(f"{name}:{spec['experiment_id']}" for name, spec in load_routing().get("families", {}).items()
                     if any(a["ab_group"] != "champion" for a in spec.get("arms", [])))
    if not running:
        return dg.SkipReason("no experiment is running (no challenger in routing.json)")
    day = datetime.now(timezone.utc).date().isoformat()
    key = hashlib.sha256("|".join(running).encode()).hexdigest()[:12]
    return dg.RunRequest(run_key=f"experiments-{day}-{key}", tags={"flywheel/experiments": ",".join(running)})
