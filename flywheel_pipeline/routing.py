"""``$FLYWHEEL_HOME/routing.json``, the routing table the outreach app reads (written atomically
by the ``routing_table`` asset; its format and the choice are in core/routing.py), and the small
Python API over it.

``choose_model(lead_id, organization_id, task_type)`` looks up the family
``flywheel-<organization or global>-<task_type>``, falling back to the global family and
then to ``task_type`` ``all``, and returns the arm for the lead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flywheel_pipeline import paths
from flywheel_pipeline.core import routing as table_rules
from flywheel_pipeline.core.atomic_json import write_json_atomic


def routing_path() -> Path:
    return paths.routing_path()


def write_routing(table: dict[str, Any], path: Path | None = None) -> Path:
    return write_json_atomic(table, path or routing_path())


def load_routing(path: Path | None = None) -> dict[str, Any]:
    path = path or routing_path()
    if not path.exists():
        return {"families": {}}
    return json.loads(path.read_text())


def choose_model(lead_id: str, organization_id: str | None, task_type: str = "all", *,
                 table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model this lead's next message should use: model_id, version, ab_group, experiment_id and
    allocation (record the last two in the message's ``metadata``; the A/B analysis reads them), and
    the template to write it with (choose_template's fields)."""
    table = table if table is not None else load_routing()
    answer = table_rules.model_for_lead(table, lead_id, organization_id, task_type)
    return {**answer, **choose_template(lead_id, organization_id, task_type, table=table)}


def choose_template(lead_id: str, organization_id: str | None, task_type: str = "all", *,
                    table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template this lead's next message should be written with: template_id, template_version
    (record both as the message's top-level fields), template_ab_group, template_experiment_id and
    template_allocation (record the last two in its ``metadata``); all None when none is routed."""
    return table_rules.template_for_lead(table if table is not None else load_routing(), lead_id,
                                        organization_id, task_type)


def running_experiments(path: Path | None = None) -> list[str]:
    """``family:experiment_id`` of every family that routes traffic to a challenger, sorted."""
    return table_rules.running_experiments(load_routing(path))


def write_template_families(families: dict[str, Any], path: Path | None = None) -> Path:
    """Replace the published table's ``template_families`` (the model families stay as they are)."""
    table = load_routing(path)
    table["template_families"] = families
    return write_routing(table, path)
