"""The routing table the outreach app reads, and the small Python API over it.

``$FLYWHEEL_HOME/routing.json`` (written atomically by the ``routing_table`` asset)::

    {"version": 1, "generated_at": "...", "default_model": "gpt-4o-mini-2024-07-18",
     "families": {"flywheel-global-all": {"experiment_id": "...", "organization_id": null,
                  "task_type": "all", "arms": [{"model_id": ..., "version": ..., "ab_group":
                  "challenger", "traffic_pct": 10.0}, {..."champion"...}]}}}

``choose_model(lead_id, organization_id, task_type)`` looks up the family
``flywheel-<organization or global>-<task_type>``, falling back to the global family and
then to ``task_type`` ``all``, and returns the arm for the lead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flywheel_pipeline import paths
from flywheel_pipeline.core.assignment import Arm, allocation_id, choose_arm
from flywheel_pipeline.published import write_json_atomic


def routing_path() -> Path:
    return paths.routing_path()


def write_routing(table: dict[str, Any], path: Path | None = None) -> Path:
    return write_json_atomic(table, path or routing_path())


def load_routing(path: Path | None = None) -> dict[str, Any]:
    path = path or routing_path()
    if not path.exists():
        return {"families": {}}
    return json.loads(path.read_text())


def family_arms(family: dict[str, Any]) -> list[Arm]:
    """The arms of one routing.json family."""
    return [Arm(a["model_id"], a.get("version"), a["ab_group"], float(a["traffic_pct"])) for a in family["arms"]]


def family_allocation(family: dict[str, Any]) -> str:
    """The allocation id of a routing.json family (its experiment and its arms' shares)."""
    return allocation_id(family["experiment_id"], family_arms(family))


def choose_model(lead_id: str, organization_id: str | None, task_type: str = "all", *,
                 table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model this lead's next message should use: model_id, version, ab_group, experiment_id and
    allocation (record the last two in the message's ``metadata``; the A/B analysis reads them)."""
    table = table if table is not None else load_routing()
    families = table.get("families", {})
    for org in (organization_id, None):
        for task in (task_type, "all"):
            family = families.get(f"flywheel-{org or 'global'}-{task}")
            if family and family.get("arms"):
                arms = family_arms(family)
                arm = choose_arm(lead_id, family["experiment_id"], arms)
                return {"model_id": arm.model_id, "version": arm.version, "ab_group": arm.ab_group,
                        "experiment_id": family["experiment_id"],
                        "allocation": allocation_id(family["experiment_id"], arms)}
    default = table.get("default_model")
    if not default:
        raise LookupError(f"no routing for organization {organization_id!r}, task {task_type!r} and no default")
    return {"model_id": default, "version": None, "ab_group": "default", "experiment_id": None,
            "allocation": None}


def running_experiments(path: Path | None = None) -> list[str]:
    """``family:experiment_id`` of every family that routes traffic to a challenger, sorted."""
    return sorted(f"{name}:{spec['experiment_id']}" for name, spec in load_routing(path).get("families", {}).items()
                  if any(a["ab_group"] != "champion" for a in spec.get("arms", [])))
