"""The local Dagster instance the demo and `flywheel refresh` record runs in.

``DAGSTER_HOME`` defaults to ``$FLYWHEEL_HOME/dagster``. When that directory has no
``dagster.yaml`` yet, a local one is written: SQLite storage (Dagster's default), the
``duckdb_warehouse`` concurrency pool limited to 1, run monitoring on, and telemetry off.
A config written by an older version (without ``run_monitoring``) gets the section added. Production uses the
repository's top-level ``dagster.yaml`` (PostgreSQL) instead; see the README.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_DAGSTER_YAML = """\
# Local Dagster instance written by flywheel_pipeline (SQLite storage under this directory).
concurrency:
  pools:
    # DuckDB allows one writing process per file; warehouse assets share one pool.
    default_limit: 1
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
# Dagster's run monitoring (the daemon of `dagster dev`): runs that never start or never finish
# cancelling are failed, and slots still held by finished runs are freed. Runs of the
# `flywheel` command itself are checked by flywheel_pipeline/run_guard.py before each job.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 60
telemetry:
  enabled: false
"""


def ensure_local_dagster_home() -> Path:
    """Set DAGSTER_HOME (default $FLYWHEEL_HOME/dagster) and make sure it holds a config."""
    from flywheel_pipeline import paths

    home = paths.dagster_home()
    home.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # FLYWHEEL_HOME: owner only
    home.mkdir(mode=0o700, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_DAGSTER_YAML)
    elif "run_monitoring:" not in (text := config.read_text()) and text.startswith("# Local Dagster instance written"):
        config.write_text(LOCAL_DAGSTER_YAML)  # ours, from before run monitoring: rewrite it
    os.environ["DAGSTER_HOME"] = str(home)
    return home
