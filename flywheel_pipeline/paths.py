"""Where the flywheel keeps its files (the FLYWHEEL_HOME contract).

``$FLYWHEEL_HOME`` (default ``.flywheel/`` in the working directory) holds::

    landing/<source>/*.jsonl   the landing zone (immutable files, see core/landing.py)
    warehouse.duckdb           the DuckDB warehouse
    dagster/                   the local Dagster instance (DAGSTER_HOME unless set)
    mlflow.db, mlartifacts/    the local MLflow store
    cache/reply_llm.sqlite     the llm reply classifier's answers (by reply hash and version)
"""

from __future__ import annotations

import os
from pathlib import Path


def flywheel_home() -> Path:
    return Path(os.environ.get("FLYWHEEL_HOME") or ".flywheel").expanduser().absolute()


def landing_dir() -> Path:
    return flywheel_home() / "landing"


def warehouse_path() -> Path:
    return flywheel_home() / "warehouse.duckdb"


def reply_llm_cache_path() -> Path:
    return flywheel_home() / "cache" / "reply_llm.sqlite"


def dagster_home() -> Path:
    env = os.environ.get("DAGSTER_HOME")
    return Path(env).expanduser().absolute() if env else flywheel_home() / "dagster"
