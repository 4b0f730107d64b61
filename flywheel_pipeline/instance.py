"""The local Dagster instance the demo and `flywheel refresh` record runs in.

``DAGSTER_HOME`` defaults to ``$FLYWHEEL_HOME/dagster``. When that directory has no
``dagster.yaml`` yet, a local one is written: SQLite storage (Dagster's default), the
``duckdb_warehouse`` concurrency pool limited to 1, run monitoring on, and telemetry off.
A config written by an older version (without ``run_monitoring``) gets the section added. The
local instance's SQLite databases are created by the first process, under a lock (two processes
creating them at once leave them unloadable). Production uses the repository's top-level
``dagster.yaml`` (PostgreSQL) instead; see the README.
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


LOCAL_HEADER = "# Local Dagster instance written"
# Dagster creates a SQLite instance's databases when the instance is first loaded, and two
# processes doing it at once can both stamp the schema version: alembic_version then holds two
# heads and every later load fails ("Version table 'alembic_version' has more than one head
# present"). So the first `flywheel` process creates them under an exclusive lock and leaves
# this marker; the others wait on the lock, then find it.
INIT_LOCK = ".flywheel-init.lock"
STORAGE_CREATED = ".flywheel-storage-created"


def ensure_local_dagster_home() -> Path:
    """Set DAGSTER_HOME (default $FLYWHEEL_HOME/dagster), make sure it holds a config and, for the
    local (SQLite) instance, that its databases exist, created by one process at a time."""
    import fcntl

    from flywheel_pipeline import paths

    home = paths.dagster_home()
    home.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # FLYWHEEL_HOME: owner only
    home.mkdir(mode=0o700, exist_ok=True)
    config = home / "dagster.yaml"
    with open(home / INIT_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed (or the process dies)
        if not config.exists():
            config.write_text(LOCAL_DAGSTER_YAML)
        elif "run_monitoring:" not in (text := config.read_text()) and text.startswith(LOCAL_HEADER):
            config.write_text(LOCAL_DAGSTER_YAML)  # ours, from before run monitoring: rewrite it
        if config.read_text().startswith(LOCAL_HEADER) and not (home / STORAGE_CREATED).exists():
            import dagster as dg

            dg.DagsterInstance.from_config(str(home)).dispose()  # creates and stamps the SQLite databases
            (home / STORAGE_CREATED).touch()
    os.environ["DAGSTER_HOME"] = str(home)
    return home
