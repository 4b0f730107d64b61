"""Template experiments in the routing table and their verdicts applied: per task type with a
champion template, a family ``templates-global-<task_type>`` whose arms are the champion and the
challenger template version (core/routing.py's format); promote / rollback exactly as for a model
challenger (warehouse/experiment_actions.py), on ``template_deployments``."""

from __future__ import annotations

import duckdb

from flywheel_pipeline.core.assignment import next_rollout_step
from flywheel_pipeline.core.stats.policy import CONTROL
from flywheel_pipeline.core.templates import split_arm_key
from flywheel_pipeline.warehouse import templates
from flywheel_pipeline.warehouse.experiment_actions import Action
from flywheel_pipeline.warehouse.experiments import latest_verdicts
from flywheel_pipeline.warehouse.routing_table import experiment_id

TEMPLATE_FAMILY_PREFIX = "templates-"


def template_family_name(organization_id: str | None, task_type: str) -> str:
    return f"{TEMPLATE_FAMILY_PREFIX}{organization_id or 'global'}-{task_type}"


def is_template_family(family: str) -> bool:
    return family.startswith(TEMPLATE_FAMILY_PREFIX)


def build_template_families(con: duckdb.DuckDBPyConnection) -> tuple[dict, list[tuple]]:
    """routing.json's ``template_families`` and one row per arm (routing_table.ROWS_HEADER)."""
    families, rows = {}, []
    for task_type, champion, challenger in templates.live(con):
        family = template_family_name(None, task_type)
        arms = []
        if challenger is not None:
            arms.append({"template_id": challenger.template_id, "template_version": challenger.version,
                         "text": challenger.text, "ab_group": "challenger", "traffic_pct": challenger.traffic_pct})
        champion_pct = 100.0 - (challenger.traffic_pct if challenger else 0.0)
        arms.append({"template_id": champion.template_id, "template_version": champion.version,
                     "text": champion.text, "ab_group": CONTROL, "traffic_pct": champion_pct})
        experiment = experiment_id(family, challenger.key if challenger else None)
        families[family] = {"experiment_id": experiment, "organization_id": None, "task_type": task_type,
                            "arms": arms}
        rows += [(family, experiment, a["ab_group"], f"{a['template_id']}@{a['template_version']}",
                  a["template_version"], a["traffic_pct"]) for a in arms]
    return families, rows


def apply_template_verdicts(con: duckdb.DuckDBPyConnection, rollout_steps: tuple[float, ...]) -> list[Action]:
    """Act once on each template challenger's latest verdict: the next rollout step, champion at the
    last (the old champion archived), archived on rollback or an inconclusive end."""
    actions = []
    for family, _arm, key, champion_key, decision, reason, final in latest_verdicts(con):
        if not is_template_family(family):
            continue
        try:
            current = templates.get(con, *split_arm_key(key))
        except KeyError:
            continue
        if current.status != "ready":
            continue  # already acted on, or replaced
        if decision == "promote":
            step = next_rollout_step(current.traffic_pct, rollout_steps)
            if step < rollout_steps[-1]:
                templates.set_state(con, key, "ready", "challenger", step)
                actions.append(Action(family, key, f"rollout to {step:g}%", reason))
                continue
            old = templates.champion(con, current.task_type)
            if old is not None:
                templates.set_state(con, old.key, "archived", "archived", 0.0)
            templates.set_state(con, key, "deployed", CONTROL, 100.0)
            actions.append(Action(family, key, "promoted to champion", reason))
        elif decision == "rollback" or (decision == "inconclusive" and final):
            group = "rolled_back" if decision == "rollback" else "inconclusive"
            templates.set_state(con, key, "archived", group, 0.0)
            actions.append(Action(family, key, "rolled back" if decision == "rollback" else "ended inconclusive",
                                  reason))
    return actions
