"""The model registry table: every fine-tuned model, its version, status and lineage.

Status lifecycle: ``training`` -> ``ready`` (job succeeded) or ``failed``; ``ready`` ->
``deployed`` (promoted, serves traffic) -> ``archived`` (replaced or rolled back).
One family (``organization_id`` or ``global``, ``task_type``) has at most one ``deployed``
champion; the leaderboard fills the outcome metric columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from flywheel_pipeline.core.versioning import change_kind, next_version

STATUSES = ("training", "ready", "deployed", "archived", "failed")
_TRANSITIONS = {"training": {"ready", "failed"}, "ready": {"deployed", "archived"},
                "deployed": {"archived"}, "archived": {"deployed"}, "failed": set()}

DDL = """
CREATE TABLE IF NOT EXISTS model_registry (
    model_id VARCHAR PRIMARY KEY, family VARCHAR NOT NULL, organization_id VARCHAR, task_type VARCHAR NOT NULL,
    version VARCHAR NOT NULL, base_model VARCHAR NOT NULL, backend VARCHAR NOT NULL, method VARCHAR NOT NULL,
    job_id VARCHAR, job_key VARCHAR, status VARCHAR NOT NULL, traffic_pct DOUBLE NOT NULL DEFAULT 0,
    ab_group VARCHAR, dataset_version VARCHAR NOT NULL, training_examples BIGINT, positives BIGINT,
    deals_in_training BIGINT, hyperparameters JSON, trained_tokens BIGINT, mlflow_run_id VARCHAR,
    mlflow_model_version VARCHAR, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
    reply_rate DOUBLE, meeting_rate DOUBLE, close_rate DOUBLE, weighted_score DOUBLE, messages_sent BIGINT)
"""


def family_name(organization_id: str | None, task_type: str) -> str:
    return f"flywheel-{organization_id or 'global'}-{task_type}"


@dataclass(frozen=True)
class Registration:
    model_id: str
    family: str
    version: str
    change: str


def register(con: duckdb.DuckDBPyConnection, *, model_id: str, organization_id: str | None, task_type: str,
             base_model: str, backend: str, method: str, job_id: str | None, job_key: str | None,
             dataset_version: str, stats: dict[str, Any], hyperparameters: dict[str, Any],
             trained_tokens: int | None, status: str = "ready", version_override: str | None = None,
             change: str | None = None) -> Registration:
    """Add a model (idempotent on model_id: a re-run returns the existing registration)."""
    con.execute(DDL)
    existing = con.execute("SELECT family, version FROM model_registry WHERE model_id = ?", [model_id]).fetchone()
    family = family_name(organization_id, task_type)
    if existing:
        return Registration(model_id, existing[0], existing[1], "existing")
    latest = con.execute("""SELECT version, base_model, method, dataset_version FROM model_registry
                            WHERE family = ? ORDER BY created_at DESC LIMIT 1""", [family]).fetchone()
    previous = None if latest is None else {"base_model": latest[1], "method": latest[2], "dataset_version": latest[3]}
    kind = change or change_kind(previous, {"base_model": base_model, "method": method,
                                            "dataset_version": dataset_version})
    top = con.execute("SELECT version FROM model_registry WHERE family = ?", [family]).fetchall()
    highest = max((v[0] for v in top), key=lambda v: tuple(int(x) for x in v.split(".")), default=None)
    version = next_version(highest, kind, version_override)
    con.execute("""INSERT INTO model_registry (model_id, family, organization_id, task_type, version, base_model,
                       backend, method, job_id, job_key, status, dataset_version, training_examples, positives,
                       deals_in_training, hyperparameters, trained_tokens, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP, now()::TIMESTAMP)""",
                [model_id, family, organization_id, task_type, version, base_model, backend, method, job_id, job_key,
                 status, dataset_version, stats.get("examples"), stats.get("positives"),
                 stats.get("deals_in_training"), json.dumps(hyperparameters), trained_tokens])
    return Registration(model_id, family, version, kind)


def set_status(con: duckdb.DuckDBPyConnection, model_id: str, status: str, *, traffic_pct: float | None = None,
               ab_group: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    row = con.execute("SELECT status FROM model_registry WHERE model_id = ?", [model_id]).fetchone()
    if row is None:
        raise KeyError(f"no model {model_id} in the registry")
    if status != row[0] and status not in _TRANSITIONS[row[0]]:
        raise ValueError(f"a {row[0]} model cannot become {status}")
    con.execute("""UPDATE model_registry SET status = ?, traffic_pct = coalesce(?, traffic_pct),
                   ab_group = coalesce(?, ab_group), updated_at = now()::TIMESTAMP WHERE model_id = ?""",
                [status, traffic_pct, ab_group, model_id])


def champion(con: duckdb.DuckDBPyConnection, family: str) -> str | None:
    con.execute(DDL)
    row = con.execute("SELECT model_id FROM model_registry WHERE family = ? AND status = 'deployed' "
                      "ORDER BY updated_at DESC LIMIT 1", [family]).fetchone()
    return row[0] if row else None


def set_mlflow(con: duckdb.DuckDBPyConnection, model_id: str, run_id: str, model_version: str | None) -> None:
    con.execute("UPDATE model_registry SET mlflow_run_id = ?, mlflow_model_version = ?, updated_at = now()::TIMESTAMP "
                "WHERE model_id = ?", [run_id, model_version, model_id])
