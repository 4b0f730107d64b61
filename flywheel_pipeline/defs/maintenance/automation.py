"""The lake_maintenance job and its daily schedule (on unless FLYWHEEL_AUTOMATION=off)."""

import dagster as dg

from flywheel_pipeline.defs.automation_switch import schedule_status
from flywheel_pipeline.defs.maintenance.assets import MAINTENANCE_GROUP

LAKE_MAINTENANCE_JOB_NAME = "lake_maintenance"

lake_maintenance_job = dg.define_asset_job(
    LAKE_MAINTENANCE_JOB_NAME,
    selection=dg.AssetSelection.groups(MAINTENANCE_GROUP),
    description="Merge the warehouse's small files, expire old snapshots (keeping those exports name) and "
                "delete files no snapshot needs (DuckLake); CHECKPOINT on the DuckDB file. Run by the daily "
                "schedule and `flywheel maintain`.",
    executor_def=dg.in_process_executor,
    tags={"flywheel/kind": "maintenance"},
)

daily_lake_maintenance_schedule = dg.ScheduleDefinition(
    name="daily_lake_maintenance",
    job=lake_maintenance_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    default_status=schedule_status(),
    description="Maintain the warehouse daily at 04:30 UTC, after the 03:00 refresh (it waits for the warehouse "
                "pool, so it never runs beside a writing run).",
)
