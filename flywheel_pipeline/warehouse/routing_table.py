"""The routing table built from the model registry: per family its champion (or the default
model) and its challenger with their traffic shares. Building it applies the rollout choice
(core/rollout.py) to the registry; routing.py writes it as routing.json."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timezone

import duckdb

from flywheel_pipeline.core.rollout import Challenger, choose_challenger
from flywheel_pipeline.warehouse import model_registry as registry

ROWS_HEADER = ("family", "experiment", "group", "model", "version", "traffic %")


def experiment_id(family: str, challenger: str | None) -> str:
    return hashlib.sha256(f"{family}|{challenger or ''}".encode()).hexdigest()[:12]


def build_routing_table(con: duckdb.DuckDBPyConnection, default_model: str, first_step_pct: float,
                        passed: set[str], log: Callable[[str], None]) -> tuple[dict, list[tuple]]:
    """The routing table (routing.py's format) and one row per arm (ROWS_HEADER). The newest ready
    model in ``passed`` becomes its family's challenger at ``first_step_pct`` (see
    core/rollout.choose_challenger); champions' traffic shares are written back to the registry."""
    families: dict[str, dict] = {}
    rows = []
    for family, organization_id, task_type in con.execute(
            "SELECT DISTINCT family, organization_id, task_type FROM model_registry ORDER BY 1").fetchall():
        champion = con.execute("SELECT model_id, version FROM model_registry WHERE family = ? AND "
                               "status = 'deployed' ORDER BY updated_at DESC LIMIT 1", [family]).fetchone()
        current = con.execute("SELECT model_id, version, traffic_pct FROM model_registry WHERE family = ? AND "
                              "status = 'ready' AND ab_group = 'challenger' ORDER BY updated_at DESC LIMIT 1",
                              [family]).fetchone()
        newest = con.execute("SELECT model_id, version FROM model_registry WHERE family = ? AND "
                             "status = 'ready' ORDER BY created_at DESC LIMIT 1", [family]).fetchone()
        choice = choose_challenger(None if current is None else Challenger(current[0], current[1], float(current[2])),
                                   newest, passed, first_step_pct)
        if choice.action == "wait":
            log(f"{family}: {choice.waiting} waits: challenger {current[0]} is mid-rollout at {current[2]:g}%")
        if choice.action == "replace":
            registry.set_status(con, choice.replaced, "archived", traffic_pct=0.0)
            log(f"{family}: challenger {choice.replaced} replaced by newer {choice.challenger.model_id}")
        if choice.action in ("start", "replace"):
            registry.set_status(con, choice.challenger.model_id, "ready", traffic_pct=first_step_pct,
                                ab_group="challenger")
        challenger = choice.challenger
        champion_model = champion or (default_model, None)
        arms = []
        if challenger is not None:
            arms.append({"model_id": challenger.model_id, "version": challenger.version, "ab_group": "challenger",
                         "traffic_pct": challenger.traffic_pct})
        champion_pct = 100.0 - (challenger.traffic_pct if challenger else 0.0)
        arms.append({"model_id": champion_model[0], "version": champion_model[1], "ab_group": "champion",
                     "traffic_pct": champion_pct})
        if champion is not None:
            con.execute("UPDATE model_registry SET traffic_pct = ?, ab_group = 'champion' WHERE model_id = ?",
                        [champion_pct, champion[0]])
        experiment = experiment_id(family, challenger.model_id if challenger else None)
        families[family] = {"experiment_id": experiment, "organization_id": organization_id,
                            "task_type": task_type, "arms": arms}
        rows += [(family, experiment, a["ab_group"], a["model_id"], a["version"], a["traffic_pct"]) for a in arms]
    table = {"version": 1, "generated_at": datetime.now(timezone.utc).isoformat(),
             "default_model": default_model, "families": families}
    return table, rows
