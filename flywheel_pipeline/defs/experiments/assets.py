"""Experiment assets: the routing table the outreach app reads (A/B arms per model family), the
experiments' statistics and verdicts, and applying them."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.assignment import DEFAULT_ROLLOUT_STEPS
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.core.stats.policy import (CONTROL, DEFAULT_PLANNED_LEADS, Decision, PolicyConfig, StepPlan,
                                                 decide, plan_step, planned_leads, step_of)
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MlflowResource, WarehouseResource
from flywheel_pipeline.defs.training.assets import offline_evaluation
from flywheel_pipeline.core.routing import family_allocation, template_family_arms
from flywheel_pipeline.core.assignment import allocation_id
from flywheel_pipeline.core.templates import arm_key
from flywheel_pipeline.routing import load_routing, routing_path, write_routing
from flywheel_pipeline.tracking import sync_aliases
from flywheel_pipeline.warehouse.experiment_actions import ACTIONS_HEADER, apply_verdicts
from flywheel_pipeline.warehouse.experiments import (MODEL_LAYER, TEMPLATE_LAYER, Layer, allocation_start,
                                                     allocations_logged, arm_has_messages, arm_statistics, baseline,
                                                     record_decision, save_step_plan, step_plan, traffic)
from flywheel_pipeline.warehouse.routing_table import ROWS_HEADER, build_routing_table
from flywheel_pipeline.warehouse.template_routing import apply_template_verdicts, build_template_families

EXPERIMENTS_GROUP = "experiments"


class RoutingConfig(dg.Config):
    default_model: str = Field(DEFAULT_MODEL,
                               description="Serves every family without a deployed champion, and unknown families.")
    first_step_pct: float = Field(DEFAULT_ROLLOUT_STEPS[0], description="Traffic a new challenger starts with.")


@dg.asset(group_name=EXPERIMENTS_GROUP, pool=WAREHOUSE_POOL, kinds={"json"}, deps=[offline_evaluation],
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
        if m.get("gate_passed", m["loss_rate"] - m["win_rate"] <= m["max_loss_margin"]):
            passed.add(m["candidate"])
    with warehouse.connect() as con:
        table, rows = build_routing_table(con, config.default_model, config.first_step_pct, passed, context.log.info)
        table["template_families"], template_rows = build_template_families(con)
    rows += template_rows
    path = write_routing(table, routing_path())
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)), "families": len(table["families"]),
        "arms": dg.MetadataValue.md(md_table(ROWS_HEADER, rows))})


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


def _arms(spec: dict, layer: Layer) -> dict[str, str]:
    """{ab_group: what the arm names}: a model id, or ``<template_id>@<version>``."""
    if layer is TEMPLATE_LAYER:
        return {a["ab_group"]: arm_key(a["template_id"], a["template_version"]) for a in spec["arms"]}
    return {a["ab_group"]: a["model_id"] for a in spec["arms"]}


def _evaluate(con, family: str, spec: dict, config: AbTestConfig, log,
              layer: Layer = MODEL_LAYER) -> tuple[Decision, StepPlan, str | None]:
    """One experiment: per-arm statistics within its current allocation, the verdicts, the plan."""
    arms = _arms(spec, layer)
    weights = {a["ab_group"]: float(a["traffic_pct"]) for a in spec["arms"]}
    allocation = (allocation_id(spec["experiment_id"], template_family_arms(spec)) if layer is TEMPLATE_LAYER
                  else family_allocation(spec))
    if not allocations_logged(con, spec["experiment_id"], layer):
        if any(arm_has_messages(con, g, m, layer) for g, m in arms.items() if g != CONTROL):
            log.warning(f"{family}: messages do not record metadata.allocation; comparing all routed messages, "
                        "which mixes rollout steps")
            allocation = None
        else:  # just published: compared on its own traffic, of which there is none yet
            log.info(f"{family}: no message sent through experiment {spec['experiment_id']} yet")
    started = allocation_start(con, arms, allocation, layer)
    champion = baseline(con, arms[CONTROL], organization_id=spec.get("organization_id"),
                        task_type=spec.get("task_type") or "all", before=started, layer=layer)
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
    decision = decide(arm_statistics(con, arms, allocation, layer), weights, policy)
    reached, rate = traffic(con, arms, allocation, layer)
    plan = plan_step(champion, weights, policy, leads_so_far=reached, leads_per_day=rate)
    return decision, plan, allocation


def _days(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


@dg.asset(group_name=EXPERIMENTS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[routing_table, outcome_labels],
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
        experiments = [(family, spec, MODEL_LAYER) for family, spec in sorted(table.get("families", {}).items())]
        experiments += [(family, spec, TEMPLATE_LAYER)
                        for family, spec in sorted((table.get("template_families") or {}).items())]
        for family, spec, layer in experiments:
            arms = _arms(spec, layer)
            if len(arms) < 2 or CONTROL not in arms:
                continue
            decision, plan, allocation = _evaluate(con, family, spec, config, context.log, layer)
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
    default_model: str = Field(DEFAULT_MODEL, description="Serves every family without a deployed champion.")
    rollout_steps: list[float] = Field(default_factory=lambda: list(DEFAULT_ROLLOUT_STEPS),
                                       description="Challenger traffic shares, in order; the last promotes.")


@dg.asset(group_name=EXPERIMENTS_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "mlflow"}, deps=[ab_test_results],
          description="Applies each challenger's latest verdict: promote moves it to the next rollout step and, at "
                      "the last, makes it the champion (registry, MLflow aliases, routing); rollback archives it; "
                      "inconclusive at the step's planned end archives it too (the champion keeps the traffic).")
def experiment_decisions(context: dg.AssetExecutionContext, config: DecisionConfig, warehouse: WarehouseResource,
                         mlflow: MlflowResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        actions = apply_verdicts(con, tuple(config.rollout_steps))
        actions += apply_template_verdicts(con, tuple(config.rollout_steps))
        table, _ = build_routing_table(con, config.default_model, config.rollout_steps[0], set(), context.log.info)
        table["template_families"], _ = build_template_families(con)
    write_routing(table, routing_path())
    for action in actions:
        context.log.info(f"{action.family}: {action.challenger} {action.action} ({action.reason})")
        if action.changes_aliases:
            try:  # the registry table is the source of truth; an MLflow failure is reported, not fatal
                sync_aliases(mlflow.tracking_uri, action.family, action.champion_version, None)
            except Exception as exc:  # noqa: BLE001
                context.log.warning(f"MLflow aliases for {action.family} not updated: {exc}")
    return dg.MaterializeResult(metadata={
        "actions": len(actions),
        "applied": dg.MetadataValue.md(md_table(ACTIONS_HEADER, [a.row() for a in actions]))})
