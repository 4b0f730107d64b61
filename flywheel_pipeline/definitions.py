"""The code location: assets, checks, jobs, sensors and schedules, with resources bound by
environment (``FLYWHEEL_ENV=local`` (default) or ``production``)."""

from __future__ import annotations

import os

import dagster as dg

from flywheel_pipeline.defs.automation import (daily_refresh_schedule, datasets_job, experiment_sensor,
                                               experiments_job, landing_sensor, new_outcomes_sensor, refresh_job,
                                               retrain_job, run_failure_sensor, weekly_retrain_schedule)
from flywheel_pipeline.defs.datasets import DATASET_ASSETS, DATASET_CHECKS
from flywheel_pipeline.defs.experiments import EXPERIMENT_ASSETS
from flywheel_pipeline.defs.ingest import INGEST_ASSETS
from flywheel_pipeline.defs.leaderboard import LEADERBOARD_ASSETS
from flywheel_pipeline.defs.outcomes import OUTCOME_ASSETS, OUTCOME_CHECKS
from flywheel_pipeline.defs.training import TRAINING_ASSETS, TRAINING_CHECKS
from flywheel_pipeline.defs.resources import local_resources, production_resources


def build_definitions(environment: str | None = None) -> dg.Definitions:
    environment = (environment or os.environ.get("FLYWHEEL_ENV") or "local").lower()
    if environment == "local":
        resources = local_resources()
    elif environment == "production":
        resources = production_resources()
    else:
        raise ValueError(f"FLYWHEEL_ENV must be 'local' or 'production', got {environment!r}")
    return dg.Definitions(
        assets=[*INGEST_ASSETS, *OUTCOME_ASSETS, *DATASET_ASSETS, *TRAINING_ASSETS, *EXPERIMENT_ASSETS,
                *LEADERBOARD_ASSETS],
        asset_checks=[*OUTCOME_CHECKS, *DATASET_CHECKS, *TRAINING_CHECKS],
        jobs=[refresh_job, datasets_job, retrain_job, experiments_job],
        sensors=[landing_sensor, new_outcomes_sensor, run_failure_sensor, experiment_sensor],
        schedules=[daily_refresh_schedule, weekly_retrain_schedule],
        resources=resources,
    )


defs = build_definitions()
