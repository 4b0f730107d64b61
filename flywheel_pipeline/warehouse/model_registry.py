"""The model registry table: every fine-tuned model, its version, status and lineage.

Status lifecycle: ``training`` -> ``ready`` (job succeeded) or ``failed``; ``ready`` ->
``deployed`` (promoted, serves traffic) -> ``archived`` (replaced or rolled back).
One family (``organization_id`` or ``global``, ``task_type``) has at most one ``deployed``
champion; the leaderboard fills the outcome metric columns. The table is created by the
warehouse's migrations (warehouse/schema.py).
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
    row = con.execute("SELECT model_id FROM model_registry WHERE family = ? AND status = 'deployed' "
                      "ORDER BY updated_at DESC LIMIT 1", [family]).fetchone()
    return row[0] if row else None


def set_mlflow(con: duckdb.DuckDBPyConnection, model_id: str, run_id: str, model_version: str | None) -> None:
    con.execute("UPDATE model_registry SET mlflow_run_id = ?, mlflow_model_version = ?, updated_at = now()::TIMESTAMP "
                "WHERE model_id = ?", [run_id, model_version, model_id])


def mlflow_run_of(con: duckdb.DuckDBPyConnection, model_id: str) -> str | None:
    row = con.execute("SELECT mlflow_run_id FROM model_registry WHERE model_id = ?", [model_id]).fetchone()
    return row[0] if row else None


OVERVIEW_COLUMNS = ("family", "version", "status", "traffic %", "model", "backend", "method", "dataset", "examples",
                    "positives", "deals", "mlflow version")


def overview(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple], dict[str, int]]:
    """Every model (OVERVIEW_COLUMNS) and the count per status."""
    rows = con.execute("""SELECT family, version, status, traffic_pct, model_id, backend, method, dataset_version,
                                 training_examples, positives, deals_in_training, mlflow_model_version
                          FROM model_registry ORDER BY family, created_at""").fetchall()
    statuses = dict(con.execute("SELECT status, count(*) FROM model_registry GROUP BY 1").fetchall())
    return rows, {str(k): int(v) for k, v in statuses.items()}


def families_with_several_champions(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    return con.execute("SELECT family, count(*) FROM model_registry WHERE status = 'deployed' GROUP BY 1 "
                       "HAVING count(*) > 1").fetchall()


def latest_positives(con: duckdb.DuckDBPyConnection) -> int:
    """Positives in the dataset of the latest model that did not fail (0 before the first)."""
    row = con.execute("SELECT positives FROM model_registry WHERE status <> 'failed' "
                      "ORDER BY created_at DESC LIMIT 1").fetchone()
    return int(row[0] or 0) if row else 0


def mlflow_version_of(con: duckdb.DuckDBPyConnection, model_id: str) -> str | None:
    row = con.execute("SELECT mlflow_model_version FROM model_registry WHERE model_id = ?", [model_id]).fetchone()
    return row[0] if row else None


def update_outcome_metrics(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    """The leaderboard's numbers per model (keys model, reply, meeting, close, score, messages)."""
    con.executemany("UPDATE model_registry SET reply_rate = ?, meeting_rate = ?, close_rate = ?, "
                    "weighted_score = ?, messages_sent = ? WHERE model_id = ?",
                    [[b["reply"], b["meeting"], b["close"], b["score"], b["messages"], b["model"]] for b in rows])
