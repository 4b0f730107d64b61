"""What the control API reads from and changes in the model registry and the experiments' results
(the rules are core/control.py; the actions, with their audit, flywheel_pipeline/control.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import duckdb

from flywheel_pipeline.core.control import retired_as, role_of
from flywheel_pipeline.warehouse import model_registry as registry

_MODEL_COLUMNS = ("model_id", "family", "organization_id", "task_type", "version", "status", "traffic_pct",
                  "ab_group", "base_model", "backend", "method", "dataset_version", "training_examples", "positives",
                  "mlflow_model_version", "weighted_score", "messages_sent", "created_at", "updated_at")


@dataclass(frozen=True)
class Model:
    model_id: str
    family: str
    organization_id: str | None
    task_type: str
    version: str
    status: str  # the registry's
    traffic_pct: float
    ab_group: str | None
    base_model: str
    backend: str
    method: str
    dataset_version: str
    training_examples: int | None
    positives: int | None
    mlflow_model_version: str | None
    weighted_score: float | None
    messages_sent: int | None
    created_at: datetime
    updated_at: datetime

    @property
    def role(self) -> str:
        return role_of(self.status, self.ab_group, self.traffic_pct)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["registry_status"] = out.pop("status")
        out["status"] = self.role
        out["retired_as"] = retired_as(self.status, self.ab_group)
        for key in ("created_at", "updated_at"):
            out[key] = out[key].isoformat() + "Z"
        return out


def _models(con: duckdb.DuckDBPyConnection, where: str = "TRUE", params: list | None = None) -> list[Model]:
    rows = con.execute(f"SELECT {', '.join(_MODEL_COLUMNS)} FROM model_registry WHERE {where} "
                       "ORDER BY family, created_at", params or []).fetchall()
    return [Model(*row) for row in rows]


def all_models(con: duckdb.DuckDBPyConnection) -> list[Model]:
    return _models(con)


def find(con: duckdb.DuckDBPyConnection, ref: str, family: str | None = None) -> list[Model]:
    """The models a reference names: a model id, else a registry version (in ``family`` if given)."""
    by_id = _models(con, "model_id = ?", [ref])
    if by_id:
        return by_id
    return _models(con, "version = ? AND (? IS NULL OR family = ?)", [ref, family, family])


def family_exists(con: duckdb.DuckDBPyConnection, family: str) -> bool:
    return con.execute("SELECT EXISTS (SELECT 1 FROM model_registry WHERE family = ?)", [family]).fetchone()[0]


def challenger(con: duckdb.DuckDBPyConnection, family: str) -> Model | None:
    """The family's running challenger (the one the routing table routes to), if any."""
    found = _models(con, "family = ? AND status = 'ready' AND ab_group = 'challenger' AND traffic_pct > 0 "
                         "AND updated_at = (SELECT max(updated_at) FROM model_registry WHERE family = ? AND "
                         "status = 'ready' AND ab_group = 'challenger' AND traffic_pct > 0)", [family, family])
    return found[0] if found else None


def champion(con: duckdb.DuckDBPyConnection, family: str) -> Model | None:
    model_id = registry.champion(con, family)
    return _models(con, "model_id = ?", [model_id])[0] if model_id else None


def families_with_challengers(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT family FROM model_registry WHERE status = 'ready' AND "
                                      "ab_group = 'challenger' AND traffic_pct > 0 ORDER BY 1").fetchall()]


def families(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT family FROM model_registry ORDER BY 1").fetchall()]


@dataclass(frozen=True)
class Verdict:
    """A challenger's latest evaluation by the experiments (``ab_test_results``)."""

    evaluated_at: datetime
    experiment_id: str
    challenger: str
    champion: str
    decision: str
    reason: str
    step: str | None
    final: bool
    challenger_leads: int | None
    champion_leads: int | None
    lift: float | None  # the weighted score's relative lift
    p_adjusted: float | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "evaluated_at": self.evaluated_at.isoformat() + "Z"}


def latest_verdict(con: duckdb.DuckDBPyConnection, family: str, challenger_model: str) -> Verdict | None:
    """The latest evaluation of this challenger in this family (the weighted score's row when it has
    one), None before the experiments have evaluated it."""
    row = con.execute("""
        SELECT evaluated_at, experiment_id, challenger, champion, decision, reason, step, coalesce(final, false),
               challenger_leads, champion_leads, CASE WHEN metric = 'weighted_score' THEN relative_lift END,
               CASE WHEN metric = 'weighted_score' THEN p_adjusted END
        FROM ab_test_results
        WHERE family = ? AND challenger = ?
        ORDER BY evaluated_at DESC, (metric = 'weighted_score') DESC NULLS LAST LIMIT 1""",
                      [family, challenger_model]).fetchone()
    return None if row is None else Verdict(*row)


def set_challenger(con: duckdb.DuckDBPyConnection, model_id: str, share: float) -> None:
    registry.set_status(con, model_id, "ready", traffic_pct=share, ab_group="challenger")


def make_champion(con: duckdb.DuckDBPyConnection, family: str, model_id: str) -> str | None:
    """``model_id`` serves the family; the champion it replaces is retired as a former champion
    (a later rollback can bring it back). Returns the replaced champion."""
    old = registry.champion(con, family)
    if old and old != model_id:
        registry.set_status(con, old, "archived", traffic_pct=0.0, ab_group="archived")
    registry.set_status(con, model_id, "deployed", traffic_pct=100.0, ab_group="champion")
    return old if old != model_id else None


def retire(con: duckdb.DuckDBPyConnection, model_id: str, why: str) -> None:
    registry.set_status(con, model_id, "archived", traffic_pct=0.0, ab_group=why)
