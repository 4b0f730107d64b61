"""Experiment assets: the routing table the outreach app reads (A/B arms per model family)."""

import hashlib
from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.assignment import DEFAULT_ROLLOUT_STEPS, next_rollout_step
from flywheel_pipeline.defs.metadata import md_table
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.tracking import sync_aliases
from flywheel_pipeline.defs.training import offline_evaluation
from flywheel_pipeline.core.stats.policy import (CONTROL, DEFAULT_PLANNED_LEADS, Decision, PolicyConfig, StepPlan,
                                                 decide, plan_step, planned_leads, step_of)
from flywheel_pipeline.defs.outcomes import outcome_labels
from flywheel_pipeline.routing import family_allocation, load_routing, routing_path, write_routing
from flywheel_pipeline.warehouse.experiments import (allocation_start, allocations_logged, arm_has_messages,
                                                     arm_statistics, baseline, ensure_ab_results, latest_verdicts,
                                                     record_decision, save_step_plan, step_plan,
                                                     traffic)
from flywheel_pipeline.warehouse import model_registry as registry

EXPERIMENTS_GROUP = "experiments"


def publish_routing(con, default_model: str, first_step_pct: float, passed: set[str], log
                    ) -> tuple[dict, list[tuple]]:
    """Build the routing table from the registry (promoting a newly evaluated model to challenger
    at the first step), write routing.json atomically, and return it with one row per arm."""
    families: dict[str, dict] = {}
    rows = []
    con.execute(registry.DDL)
    for family, organization_id, task_type in con.execute(
            "SELECT DISTINCT family, organization_id, task_type FROM model_registry ORDER BY 1").fetchall():
        champion = con.execute("SELECT model_id, version FROM model_registry WHERE family = ? AND "
                               "status = 'deployed' ORDER BY updated_at DESC LIMIT 1", [family]).fetchone()
        current = con.execute("SELECT model_id, version, traffic_pct FROM model_registry WHERE family = ? AND "
                              "status = 'ready' AND ab_group = 'challenger' ORDER BY updated_at DESC LIMIT 1",
                              [family]).fetchone()
        newest = con.execute("SELECT model_id, version FROM model_registry WHERE family = ? AND "
                             "status = 'ready' ORDER BY created_at DESC LIMIT 1", [family]).fetchone()
        challenger = None if current is None else (current[0], current[1], float(current[2]))
        newer = newest is not None and newest[0] in passed and (current is None or current[0] != newest[0])
        if newer and challenger is not None and challenger[2] > first_step_pct:
            # a challenger that has already earned a rollout step finishes its experiment first;
            # the newer model waits (ready) for the next training cycle's evaluation and routing
            log.info(f"{family}: {newest[0]} waits: challenger {current[0]} is mid-rollout at {current[2]:g}%")
        elif newer:
            # a newer model that passed offline evaluation replaces a challenger still at the first
            # step; its experiment (and so the lead split) starts afresh at the first rollout step
            if current is not None:
                registry.set_status(con, current[0], "archived", traffic_pct=0.0)
                log.info(f"{family}: challenger {current[0]} replaced by newer {newest[0]}")
            challenger = (newest[0], newest[1], first_step_pct)
            registry.set_status(con, newest[0], "ready", traffic_pct=first_step_pct,
                                ab_group="challenger")
        champion_model = champion or (default_model, None)
        arms = []
        if challenger is not None:
            arms.append({"model_id": challenger[0], "version": challenger[1], "ab_group": "challenger",
                         "traffic_pct": challenger[2]})
        champion_pct = 100.0 - (challenger[2] if challenger else 0.0)
        arms.append({"model_id": champion_model[0], "version": champion_model[1], "ab_group": "champion",
                     "traffic_pct": champion_pct})
        if champion is not None:
            con.execute("UPDATE model_registry SET traffic_pct = ?, ab_group = 'champion' WHERE model_id = ?",
                        [champion_pct, champion[0]])
        experiment_id = hashlib.sha256(f"{family}|{challenger[0] if challenger else ''}".encode()).hexdigest()[:12]
        families[family] = {"experiment_id": experiment_id, "organization_id": organization_id,
                            "task_type": task_type, "arms": arms}
        rows += [(family, experiment_id, a["ab_group"], a["model_id"], a["version"], a["traffic_pct"]) for a in arms]
    table = {"version": 1, "generated_at": datetime.now(timezone.utc).isoformat(),
             "default_model": default_model, "families": families}
    write_routing(table, routing_path())
    return table, rows


class RoutingConfig(dg.Config):
    default_model: str = Field("gpt-4o-mini-2024-07-18",
                               description="Serves every family without a deployed champion, and unknown families.")
    first_step_pct: float = Field(DEFAULT_ROLLOUT_STEPS[0], description="Traffic a new challenger starts with.")


@dg.asset(group_name=EXPERIMENTS_GROUP, kinds={"json"}, deps=[offline_evaluation],
          description="Current arms per organization and task (champion, challenger with its traffic share), "
                      "published as $FLYWHEEL_HOME/routing.json for flywheel_pipeline.routing.choose_model. "
                      "The newest model that passed offline evaluation becomes the challenger at the first "
                      "rollout step, replacing (archiving) an older unpromoted challenger.")
def routing_table(context: dg.AssetExecutionContext, config: RoutingConfig,
                  warehouse: WarehouseResource) -> dg.MaterializeResult:
    evaluation = context.instance.get_latest_materialization_event(offline_evaluation.key)
    passed: set[str] = set()
    if evaluation is not None and evaluation.asset_materialization is not None:
        m = {k: v.value for k, v in evaluation.asset_materialization.metadata.items()}
        if m["loss_rate"] - m["win_rate"] <= m["max_loss_margin"]:
            passed.add(m["candidate"])
    with warehouse.connect() as con:
        table, rows = publish_routing(con, config.default_model, config.first_step_pct, passed, context.log)
    path = routing_path()
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)), "families": len(table["families"]),
        "arms": dg.MetadataValue.md(md_table(["family", "experiment", "group", "model", "version", "traffic %"], rows))})


class AbTestConfig(dg.Config):
    alpha: float = Field(PolicyConfig.alpha, description="Family-wise error of each step's verdicts (harm; "
                                                         "promotion), held over every daily look.")
    n_star: float | None = Field(None, description="Planned leads of every rollout step, all arms; default: each "
                                                   "step planned before it starts from the champion's baseline "
                                                   "(harm_to_detect, lift_to_detect, target_power).")
    harm_to_detect: float = Field(PolicyConfig.harm_to_detect,
                                  description="A harm step is sized to find a weighted score this much lower.")
    lift_to_detect: float = Field(PolicyConfig.lift_to_detect,
                                  description="The efficacy step is sized to find a weighted score this much higher.")
    target_power: float = Field(PolicyConfig.target_power, description="Chance of finding them by the planned end.")
    tolerated_drop: float = Field(PolicyConfig.tolerated_drop,
                                  description="A harm step moves on only if the weighted score is at most this "
                                              "much lower than the champion's.")
    max_cost_increase: float = Field(PolicyConfig.max_cost_increase,
                                     description="Guardrail: cost per meeting may rise by this share.")

    def policy(self, n_star: float) -> PolicyConfig:
        return PolicyConfig(alpha=self.alpha, n_star=n_star, max_cost_increase=self.max_cost_increase,
                            tolerated_drop=self.tolerated_drop, harm_to_detect=self.harm_to_detect,
                            lift_to_detect=self.lift_to_detect, target_power=self.target_power)


def _evaluate(con, family: str, spec: dict, config: AbTestConfig, log) -> tuple[Decision, StepPlan, str | None]:
    """One experiment: per-arm statistics within its current allocation, the verdicts, the plan."""
    arms = {a["ab_group"]: a["model_id"] for a in spec["arms"]}
    weights = {a["ab_group"]: float(a["traffic_pct"]) for a in spec["arms"]}
    allocation = family_allocation(spec)
    if not allocations_logged(con, spec["experiment_id"]):
        if any(arm_has_messages(con, g, m) for g, m in arms.items() if g != CONTROL):
            log.warning(f"{family}: messages do not record metadata.allocation; comparing all routed messages, "
                        "which mixes rollout steps")
            allocation = None
        else:  # just published: compared on its own traffic, of which there is none yet
            log.info(f"{family}: no message sent through experiment {spec['experiment_id']} yet")
    started = allocation_start(con, arms, allocation)
    champion = baseline(con, arms[CONTROL], organization_id=spec.get("organization_id"),
                        task_type=spec.get("task_type") or "all", before=started)
    n_star = config.n_star
    if n_star is None:  # planned once per step, from the champion before the step started
        key = allocation or f"{spec['experiment_id']}@all"
        n_star = step_plan(con, key)
        if n_star is None:
            unplanned = config.policy(DEFAULT_PLANNED_LEADS)
            n_star = planned_leads(champion, weights, unplanned)
            save_step_plan(con, allocation=key, family=family, experiment_id=spec["experiment_id"],
                           step=step_of(weights, unplanned), planned=n_star, champion_baseline=champion)
    policy = config.policy(n_star)
    decision = decide(arm_statistics(con, arms, allocation), weights, policy)
    reached, rate = traffic(con, arms, allocation)
    plan = plan_step(champion, weights, policy, leads_so_far=reached, leads_per_day=rate)
    return decision, plan, allocation


def _days(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


@dg.asset(group_name=EXPERIMENTS_GROUP, kinds={"duckdb"}, deps=[routing_table, outcome_labels],
          description="Per experiment (a champion and one or more challengers) within its current allocation: "
                      "reply, positive-reply, meeting and close rates, revenue, cost per meeting, the weighted "
                      "score (CUPED-adjusted by each lead's engagement before the experiment); fixed-horizon and "
                      "always-valid intervals, chance to win, SRM; each challenger's verdict at this step of the "
                      "ramp (continue, promote, rollback, inconclusive) with its reason, and the step's plan "
                      "(days to its planned end at the current traffic, power and detectable effect).")
def ab_test_results(context: dg.AssetExecutionContext, config: AbTestConfig,
                    warehouse: WarehouseResource) -> dg.MaterializeResult:
    table = load_routing()
    summary, metric_rows, plans = [], [], []
    evaluated_at = datetime.now(timezone.utc).replace(tzinfo=None)
    with warehouse.connect() as con:
        ensure_ab_results(con)
        for family, spec in sorted(table.get("families", {}).items()):
            arms = {a["ab_group"]: a["model_id"] for a in spec["arms"]}
            if len(arms) < 2 or CONTROL not in arms:
                continue
            decision, plan, allocation = _evaluate(con, family, spec, config, context.log)
            context.log.info(f"{family}: {decision.decision} - {decision.reason}")
            record_decision(con, evaluated_at=evaluated_at, family=family, experiment_id=spec["experiment_id"],
                            arms=arms, decision=decision, planned_leads=plan.planned_leads)
            for arm, verdict in decision.arms.items():
                summary.append((family, arm, arms[arm], allocation or "all (not logged)", decision.step,
                                decision.leads[arm], decision.leads[CONTROL], verdict, decision.reasons[arm]))
            plans.append((family, plan.step, f"{plan.leads_so_far} / {plan.planned_leads:.0f}",
                          f"{plan.leads_per_day:.0f}" if plan.leads_per_day else "", _days(plan.days_to_planned_end),
                          f"{plan.change:+.0%}",
                          f"{plan.power_at_planned_end:.0%}" if plan.power_at_planned_end is not None else "",
                          f"{plan.mde_at_planned_end:.0%}" if plan.mde_at_planned_end is not None else "",
                          f"{decision.variance_reduction:.1%}" if decision.variance_reduction is not None else ""))
            for m in decision.metrics:
                metric_rows.append((family, m.arm, m.metric, round(m.challenger, 4), round(m.champion, 4),
                                    round(m.lift, 4), f"[{m.seq_low:.4f}, {m.seq_high:.4f}]",
                                    round(m.p_adjusted, 4) if m.p_adjusted is not None else None,
                                    round(m.chance_to_win, 3)))
    return dg.MaterializeResult(metadata={
        "experiments": len(plans),
        "decisions": dg.MetadataValue.md(md_table(
            ["family", "arm", "challenger", "allocation", "step", "challenger leads", "champion leads", "decision",
             "reason"], summary)),
        "plan": dg.MetadataValue.md(md_table(
            ["family", "step", "leads reached / planned", "new leads a day", "days of traffic to planned end",
             "sized to find", "power for it at planned end",
             f"detectable at planned end ({config.target_power:.0%} power)",
             "CUPED variance reduction"], plans)),
        "metrics": dg.MetadataValue.md(md_table(
            ["family", "arm", "metric", "challenger", "champion", "lift", "always-valid CI", "Holm p", "P(win)"],
            metric_rows))})


class DecisionConfig(dg.Config):
    default_model: str = "gpt-4o-mini-2024-07-18"
    rollout_steps: list[float] = Field(default_factory=lambda: list(DEFAULT_ROLLOUT_STEPS),
                                       description="Challenger traffic shares, in order; the last promotes.")


@dg.asset(group_name=EXPERIMENTS_GROUP, kinds={"duckdb", "mlflow"}, deps=[ab_test_results],
          description="Applies each challenger's latest verdict: promote moves it to the next rollout step and, at "
                      "the last, makes it the champion (registry, MLflow aliases, routing); rollback archives it; "
                      "inconclusive at the step's planned end archives it too (the champion keeps the traffic).")
def experiment_decisions(context: dg.AssetExecutionContext, config: DecisionConfig, warehouse: WarehouseResource,
                         mlflow: MlflowResource) -> dg.MaterializeResult:
    actions = []
    with warehouse.connect() as con:
        con.execute(registry.DDL)
        for family, arm, challenger, champion, decision, reason, final in latest_verdicts(con):
            row = con.execute("SELECT status, traffic_pct, mlflow_model_version FROM model_registry WHERE model_id = ?",
                              [challenger]).fetchone()
            if row is None or row[0] != "ready":
                continue  # already acted on, replaced, or not a registry model
            if decision == "promote":
                step = next_rollout_step(float(row[1]), tuple(config.rollout_steps))
                if step < config.rollout_steps[-1]:
                    registry.set_status(con, challenger, "ready", traffic_pct=step)
                    actions.append((family, challenger, f"rollout to {step:g}%", reason))
                else:
                    old = registry.champion(con, family)
                    if old:
                        registry.set_status(con, old, "archived", traffic_pct=0.0, ab_group="archived")
                    registry.set_status(con, challenger, "deployed", traffic_pct=100.0, ab_group="champion")
                    _sync(mlflow, family, row[2], None, context)
                    actions.append((family, challenger, "promoted to champion", reason))
            elif decision == "rollback" or (decision == "inconclusive" and final):
                group = "rolled_back" if decision == "rollback" else "inconclusive"
                registry.set_status(con, challenger, "archived", traffic_pct=0.0, ab_group=group)
                champion_version = con.execute("SELECT mlflow_model_version FROM model_registry WHERE model_id = ?",
                                               [champion]).fetchone()
                _sync(mlflow, family, champion_version[0] if champion_version else None, None, context)
                actions.append((family, challenger, "rolled back" if decision == "rollback" else
                                "ended inconclusive", reason))
        publish_routing(con, config.default_model, config.rollout_steps[0], set(), context.log)
    for action in actions:
        context.log.info(f"{action[0]}: {action[1]} {action[2]} ({action[3]})")
    return dg.MaterializeResult(metadata={
        "actions": len(actions),
        "applied": dg.MetadataValue.md(md_table(["family", "challenger", "action", "reason"], actions))})


def _sync(mlflow: MlflowResource, family: str, champion_version, challenger_version, context) -> None:
    try:
        sync_aliases(mlflow.tracking_uri, family, champion_version, challenger_version)
    except Exception as exc:  # noqa: BLE001 - the registry table is the source of truth; report, do not fail
        context.log.warning(f"MLflow aliases for {family} not updated: {exc}")


EXPERIMENT_ASSETS = [routing_table, ab_test_results, experiment_decisions]
