"""The routing table's format and the choice of a lead's model from it (pure: the table in, the
arm out; flywheel_pipeline/routing.py reads and writes ``routing.json``).

A table::

    {"version": 1, "generated_at": "...", "default_model": "gpt-4o-mini-2024-07-18",
     "families": {"flywheel-global-all": {"experiment_id": "...", "organization_id": null,
                  "task_type": "all", "arms": [{"model_id": ..., "version": ..., "ab_group":
                  "challenger", "traffic_pct": 10.0}, {..."champion"...}]}},
     "template_families": {"templates-global-all": {"experiment_id": "...", "organization_id": null,
                  "task_type": "all", "arms": [{"template_id": ..., "template_version": ..., "text": ...,
                  "ab_group": "challenger", "traffic_pct": 10.0}, {..."champion"...}]}}}

Template experiments are a second, independent layer: a lead's template arm is a hash of the lead
and the template experiment's id, its model arm one of the lead and the model experiment's id, so
starting or ramping one experiment never moves a lead in the other, and each compares its arms on
leads balanced over the other's (a template arm is (the lead's routed model, template version)).
"""

from __future__ import annotations

from typing import Any

from flywheel_pipeline.core.assignment import Arm, allocation_id, choose_arm


def family_arms(family: dict[str, Any]) -> list[Arm]:
    """The arms of one family."""
    return [Arm(a["model_id"], a.get("version"), a["ab_group"], float(a["traffic_pct"])) for a in family["arms"]]


def family_allocation(family: dict[str, Any]) -> str:
    """The allocation id of a family (its experiment and its arms' shares)."""
    return allocation_id(family["experiment_id"], family_arms(family))


def model_for_lead(table: dict[str, Any], lead_id: str, organization_id: str | None,
                   task_type: str = "all") -> dict[str, Any]:
    """The family ``flywheel-<organization or global>-<task_type>``, falling back to the global
    family and then to task ``all``; the lead's arm in it (sticky per lead and experiment), or the
    table's default model. Raises LookupError when there is neither."""
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


def template_family_arms(family: dict[str, Any]) -> list[Arm]:
    """The arms of one template family, as assignment arms (model_id = template id)."""
    return [Arm(a["template_id"], a["template_version"], a["ab_group"], float(a["traffic_pct"]))
            for a in family["arms"]]


NO_TEMPLATE = {"template_id": None, "template_version": None, "template_ab_group": None,
               "template_experiment_id": None, "template_allocation": None, "template_text": None}


def template_for_lead(table: dict[str, Any], lead_id: str, organization_id: str | None,
                      task_type: str = "all") -> dict[str, Any]:
    """The template this lead's next message should be written with, sticky per lead and template
    experiment: the family ``templates-<organization or global>-<task_type>``, falling back to the
    global family and to task ``all``; every field None when no template is routed. ``template_text``
    is the Jinja2 text to render with the lead's fields (core/templates.render). The outreach app
    records ``template_id`` and ``template_version`` with the message, and ``template_experiment_id``
    and ``template_allocation`` in its metadata (the A/B analysis reads them)."""
    families = table.get("template_families") or {}
    for org in (organization_id, None):
        for task in (task_type, "all"):
            family = families.get(f"templates-{org or 'global'}-{task}")
            if family and family.get("arms"):
                arms = template_family_arms(family)
                arm = choose_arm(lead_id, family["experiment_id"], arms)
                text = next((a.get("text") for a in family["arms"] if a["ab_group"] == arm.ab_group), None)
                return {"template_id": arm.model_id, "template_version": arm.version,
                        "template_ab_group": arm.ab_group, "template_experiment_id": family["experiment_id"],
                        "template_allocation": allocation_id(family["experiment_id"], arms),
                        "template_text": text}
    return dict(NO_TEMPLATE)


def running_experiments(table: dict[str, Any]) -> list[str]:
    """``family:experiment_id`` of every family (model or template) that routes traffic to a
    challenger, sorted."""
    families = {**table.get("families", {}), **(table.get("template_families") or {})}
    return sorted(f"{name}:{spec['experiment_id']}" for name, spec in families.items()
                  if any(a["ab_group"] != "champion" for a in spec.get("arms", [])))
