"""The local Dagster instance the demo and `flywheel refresh` record runs in.

``DAGSTER_HOME`` defaults to ``$FLYWHEEL_HOME/dagster``. When that directory has no
``dagster.yaml`` yet, a local one is written: SQLite storage (Dagster's default), the
``duckdb_warehouse`` concurrency pool limited to 1, and telemetry off. Production uses the
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
telemetry:
  enabled: false
"""


def ensure_local_dagster_home() -> Path:
    """Set DAGSTER_HOME (default $FLYWHEEL_HOME/dagster) and make sure it holds a config."""
    from flywheel_pipeline import paths

    home = paths.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
