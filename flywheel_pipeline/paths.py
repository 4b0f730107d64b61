"""Where the flywheel keeps its files: every path under ``FLYWHEEL_HOME`` is named here once and
used by the CLI, the service, the Dagster resources and the sensors.

``$FLYWHEEL_HOME`` (default ``.flywheel/`` in the working directory) holds::

    landing/<source>/*.jsonl   the landing zone (immutable files, see core/landing.py);
                               FLYWHEEL_LANDING moves it (the service fills it, ingestion reads it),
                               also to object storage: s3://bucket/prefix/ (landing_store.py)
    spool/<replica>/           with an s3:// landing zone, each service replica's local spool of
                               fsynced segments not yet uploaded; FLYWHEEL_SPOOL moves it
    warehouse.duckdb           the DuckDB warehouse; FLYWHEEL_WAREHOUSE moves it, or names a DuckLake
                               catalog instead (ducklake:postgres:dbname=... host=... user=...)
                               whose Parquet files live in FLYWHEEL_WAREHOUSE_DATA_PATH (a
                               directory or s3://bucket/prefix/); read in every environment
    exports/                   validated fine-tuning files; FLYWHEEL_EXPORTS moves them
    models/                    local (trl) adapters
    routing.json               the routing table the outreach app and the service read
    leaderboard.json           the published leaderboard
    model_stats.json           the routing strategies' measurements (model_choice_stats asset)
    alerts/failures.jsonl      one line per failed Dagster run
    state/landing_ingested.json  per landing source, the digest of the files ingestion last took
                               (the landing sensor launches a refresh only for files not taken yet)
    logs/                      Dagster and MLflow log output of CLI runs (flywheel.log)
    simulator/                 the demo-world simulator's state
    dagster/                   the local Dagster instance (DAGSTER_HOME unless set), with the
                               workspace.yaml `flywheel ui` hands to `dagster dev`
    mlflow.db, mlartifacts/    the local MLflow store (MLFLOW_TRACKING_URI wins)
    cache/reply_llm.sqlite     the llm reply classifier's answers (by reply hash and version)
    catalog.yaml               extends or overrides the packaged model catalog by model_id

Every function reads the environment when called (``env`` defaults to ``os.environ``), so a
process that changes ``FLYWHEEL_HOME`` sees the change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _setting(env: Mapping[str, str] | None, name: str) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return value if value not in (None, "") else None


# FLYWHEEL_WAREHOUSE values given verbatim (not paths): MotherDuck, and DuckLake catalogs
_WAREHOUSE_URIS = ("md:", "ducklake:")


def _absolute(text: str) -> Path:
    return Path(text).expanduser().absolute()


def flywheel_home(env: Mapping[str, str] | None = None) -> Path:
    return _absolute(_setting(env, "FLYWHEEL_HOME") or ".flywheel")


S3_SCHEME = "s3://"


def landing_location(env: Mapping[str, str] | None = None) -> str:
    """The landing zone: ``s3://bucket/prefix/`` as given, else its absolute directory."""
    override = _setting(env, "FLYWHEEL_LANDING")
    if override and override.startswith(S3_SCHEME):
        return override
    return str(_absolute(override) if override else flywheel_home(env) / "landing")


def landing_dir(env: Mapping[str, str] | None = None) -> Path:
    """The landing zone as a local directory (commands that write files there); an ``s3://`` zone
    has none (ValueError)."""
    location = landing_location(env)
    if location.startswith(S3_SCHEME):
        raise ValueError(f"FLYWHEEL_LANDING={location} is in object storage, not a directory")
    return Path(location)


def spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where service replicas spool segments before uploading them to an s3:// landing zone."""
    override = _setting(env, "FLYWHEEL_SPOOL")
    return _absolute(override) if override else flywheel_home(env) / "spool"


def warehouse_path(env: Mapping[str, str] | None = None) -> Path:
    """The DuckDB warehouse file (an error when FLYWHEEL_WAREHOUSE names a URI: see warehouse_database)."""
    override = _setting(env, "FLYWHEEL_WAREHOUSE")
    if override and override.startswith(_WAREHOUSE_URIS):
        raise ValueError(f"FLYWHEEL_WAREHOUSE names a {override.split(':')[0]} warehouse, not a DuckDB file")
    return _absolute(override) if override else flywheel_home(env) / "warehouse.duckdb"


def warehouse_database(env: Mapping[str, str] | None = None) -> str:
    """The warehouse as DuckDB opens it: a file path, or an ``md:`` MotherDuck URL or a
    ``ducklake:`` catalog URI given verbatim."""
    override = _setting(env, "FLYWHEEL_WAREHOUSE")
    if override and override.startswith(_WAREHOUSE_URIS):
        return override
    return str(warehouse_path(env))


def warehouse_is_file(env: Mapping[str, str] | None = None) -> bool:
    """Whether the warehouse is a local DuckDB file (not MotherDuck or DuckLake)."""
    override = _setting(env, "FLYWHEEL_WAREHOUSE")
    return not (override and override.startswith(_WAREHOUSE_URIS))


def warehouse_exists(env: Mapping[str, str] | None = None) -> bool:
    """Whether there is a warehouse to read: a DuckDB file that exists (a MotherDuck or DuckLake
    warehouse is assumed to: opening it says when it cannot be reached)."""
    return not warehouse_is_file(env) or warehouse_path(env).exists()


def warehouse_data_path(env: Mapping[str, str] | None = None) -> str | None:
    """Where a DuckLake warehouse keeps its Parquet files: ``FLYWHEEL_WAREHOUSE_DATA_PATH``, a
    directory (made absolute) or an ``s3://`` prefix given verbatim; None: the path the catalog
    recorded when the lake was created."""
    value = _setting(env, "FLYWHEEL_WAREHOUSE_DATA_PATH")
    if value is None or value.startswith("s3://"):
        return value
    return str(_absolute(value))


def duckdb_memory_limit(env: Mapping[str, str] | None = None) -> str | None:
    """DuckDB's memory_limit for warehouse connections (``FLYWHEEL_DUCKDB_MEMORY_LIMIT``), in every environment."""
    return _setting(env, "FLYWHEEL_DUCKDB_MEMORY_LIMIT")


DEFAULT_LAKE_SNAPSHOT_RETENTION_DAYS = 7


def lake_snapshot_retention_days(env: Mapping[str, str] | None = None) -> int:
    """How many days of DuckLake snapshots lake maintenance keeps (``FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS``,
    default 7; snapshots an export's manifest names are kept longer)."""
    raw = _setting(env, "FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS")
    if raw is None:
        return DEFAULT_LAKE_SNAPSHOT_RETENTION_DAYS
    try:
        days = int(raw.strip())
    except ValueError:
        days = 0
    if days < 1:
        raise ValueError(f"FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS must be a whole number of days of at least 1, "
                         f"got {raw!r}")
    return days


def exports_dir(env: Mapping[str, str] | None = None) -> Path:
    override = _setting(env, "FLYWHEEL_EXPORTS")
    return _absolute(override) if override else flywheel_home(env) / "exports"


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "models"


def routing_path(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "routing.json"


def leaderboard_path(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "leaderboard.json"


def model_stats_path(env: Mapping[str, str] | None = None) -> Path:
    """The published per-model measurements the routing strategies rank by (``GET /route``)."""
    return flywheel_home(env) / "model_stats.json"


def alerts_path(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "alerts" / "failures.jsonl"


def landing_ingested_path(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "state" / "landing_ingested.json"


def logs_dir(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "logs"


def simulator_dir(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "simulator"


def reply_llm_cache_path(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "cache" / "reply_llm.sqlite"


def mlflow_db_path(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "mlflow.db"


def mlflow_artifacts_dir(env: Mapping[str, str] | None = None) -> Path:
    return flywheel_home(env) / "mlartifacts"


def dagster_home(env: Mapping[str, str] | None = None) -> Path:
    override = _setting(env, "DAGSTER_HOME")
    return _absolute(override) if override else flywheel_home(env) / "dagster"


def dagster_workspace_path(env: Mapping[str, str] | None = None) -> Path:
    """The workspace file `flywheel ui` writes for `dagster dev` (the top-level workspace.yaml's
    code location, loadable from any working directory)."""
    return dagster_home(env) / "workspace.yaml"


def judges_path(env: Mapping[str, str] | None = None) -> Path:
    """Which judges judge_calibration trusts, published for POST /council (the council_judges asset)."""
    return flywheel_home(env) / "judges.json"


def catalog_path(env: Mapping[str, str] | None = None) -> Path:
    """The model catalog's local extensions and overrides (core/catalog.py), by model_id."""
    return flywheel_home(env) / "catalog.yaml"


def retrain_lock_path(env: Mapping[str, str] | None = None) -> Path:
    """Held while the control API or `flywheel retrain` checks for a running retrain and creates one
    (flywheel_pipeline/control.py), so two callers cannot both launch."""
    return dagster_home(env) / ".retrain.lock"
