"""Applying the experiments' latest verdicts to the model registry: promote to the next rollout
step or to champion, roll back, end an inconclusive experiment at its planned end."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from flywheel_pipeline.core.assignment import next_rollout_step
from flywheel_pipeline.warehouse import model_registry as registry
from flywheel_pipeline.warehouse.experiments import latest_verdicts

ACTIONS_HEADER = ("family", "challenger", "action", "reason")


@dataclass(frozen=True)
class Action:
    family: str
    challenger: str
    action: str  # 'rollout to N%', 'promoted to champion', 'rolled back', 'ended inconclusive'
    reason: str
    # the MLflow registered versions the family's aliases should now name (None: leave the alias
    # unset); only for actions that change who is champion or challenger
    champion_version: str | None = None
    changes_aliases: bool = False

    def row(self) -> tuple[str, str, str, str]:
        return self.family, self.challenger, self.action, self.reason


def apply_verdicts(con: duckdb.DuckDBPyConnection, rollout_steps: tuple[float, ...]) -> list[Action]:
    """Act on each challenger's latest verdict once (a model no longer 'ready' was acted on)."""
    actions = []
    for family, _arm, challenger, champion, decision, reason, final in latest_verdicts(con):
        row = con.execute("SELECT status, traffic_pct, mlflow_model_version FROM model_registry WHERE model_id = ?",
                          [challenger]).fetchone()
        if row is None or row[0] != "ready":
            continue  # already acted on, replaced, or not a registry model
        if decision == "promote":
            step = next_rollout_step(float(row[1]), rollout_steps)
            if step < rollout_steps[-1]:
                registry.set_status(con, challenger, "ready", traffic_pct=step)
                actions.append(Action(family, challenger, f"rollout to {step:g}%", reason))
                continue
            old = registry.champion(con, family)
            if old:
                registry.set_status(con, old, "archived", traffic_pct=0.0, ab_group="archived")
            registry.set_status(con, challenger, "deployed", traffic_pct=100.0, ab_group="champion")
            actions.append(Action(family, challenger, "promoted to champion", reason, row[2], True))
        elif decision == "rollback" or (decision == "inconclusive" and final):
            group = "rolled_back" if decision == "rollback" else "inconclusive"
            registry.set_status(con, challenger, "archived", traffic_pct=0.0, ab_group=group)
            actions.append(Action(family, challenger, "rolled back" if decision == "rollback" else "ended inconclusive",
                                  reason, registry.mlflow_version_of(con, champion), True))
    return actions
