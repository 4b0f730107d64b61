"""The refresh job (ingestion and labels), the landing sensor that launches it when files land,
and the daily schedule that moves maturity with the clock."""

import hashlib
import json

import dagster as dg

from flywheel_pipeline import paths
from flywheel_pipeline.core.landing_digest import read_taken, untaken_sources
from flywheel_pipeline.defs.ingest.assets import INGEST_GROUP
from flywheel_pipeline.defs.outcomes.assets import OUTCOMES_GROUP
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


@dg.sensor(job=refresh_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Launches a refresh when landing files appear that no ingestion has taken yet. It only "
                       "lists file names and sizes (never opens the warehouse); exactly-once ingestion is the "
                       "warehouse's job.")
def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource,
                   warehouse: WarehouseResource):
    seen = json.loads(context.cursor) if context.cursor else {}
    store = landing.store()
    taken = read_taken(paths.landing_ingested_path(), store, warehouse.database)
    changed, current = untaken_sources(store, taken, seen)
    if not changed:
        return dg.SkipReason("no landing files that ingestion has not taken")
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
