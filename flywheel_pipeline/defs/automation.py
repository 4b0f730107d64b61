"""Jobs, the landing-zone sensor and the daily label refresh schedule."""

import hashlib
import json

import dagster as dg

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.defs.datasets import DATASETS_GROUP
from flywheel_pipeline.defs.ingest import INGEST_GROUP
from flywheel_pipeline.defs.outcomes import OUTCOMES_GROUP
from flywheel_pipeline.defs.resources import LandingZoneResource

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
