"""The maintenance job (the lake_maintenance op) and its daily schedule (on unless
FLYWHEEL_AUTOMATION=off)."""

import dagster as dg

from flywheel_pipeline.defs.automation_switch import schedule_status
from flywheel_pipeline.defs.maintenance.ops import lake_maintenance

MAINTENANCE_JOB_NAME = "maintenance"


@dg.job(name=MAINTENANCE_JOB_NAME, executor_def=dg.in_process_executor, tags={"flywheel/kind": "maintenance"},
        description="Merge the warehouse's small files, expire old snapshots (keeping those exports name) and "
                    "delete files no snapshot needs (DuckLake); CHECKPOINT on the DuckDB file. Run by the daily "
                    "schedule and `flywheel maintain`.")
def maintenance_job():
    lake_maintenance()


daily_lake_maintenance_schedule = dg.ScheduleDefinition(
    name="daily_lake_maintenance",
    job=maintenance_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description="Maintain the warehouse daily at 04:30 UTC, after the 03:00 refresh (it waits for the warehouse "
                "pool, so it never runs beside a writing run).",
)
