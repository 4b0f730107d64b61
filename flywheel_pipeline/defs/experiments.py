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
from flywheel_pipeline.core.stats.decisions import minimum_detectable_effect
from flywheel_pipeline.core.stats.policy import PolicyConfig, decide
from flywheel_pipeline.defs.outcomes import outcome_labels
from flywheel_pipeline.routing import family_allocation, load_routing, routing_path, write_routing
from flywheel_pipeline.warehouse.experiments import allocations_logged, arm_statistics, challenger_has_messages
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
    alpha: float = 0.05
    n_star: float = Field(10_000, description="Expected leads per experiment, both arms (tunes the confidence "
                                             "sequence; the demo world has 9,000 leads).")
    max_cost_increase: float = Field(0.25, description="Guardrail: cost per meeting may rise by this share.")


AB_DDL = """
CREATE TABLE IF NOT EXISTS ab_test_results (
    evaluated_at TIMESTAMP, family VARCHAR, experiment_id VARCHAR, challenger VARCHAR, champion VARCHAR,
    decision VARCHAR, reason VARCHAR, srm_p_value DOUBLE, challenger_leads BIGINT, champion_leads BIGINT,
    metric VARCHAR, challenger_value DOUBLE, champion_value DOUBLE, lift DOUBLE, relative_lift DOUBLE,
    ci_low DOUBLE, ci_high DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, seq_low DOUBLE, seq_high DOUBLE,
    chance_to_win DOUBLE, expected_loss DOUBLE, exact_test BOOLEAN)
"""


@dg.asset(group_name=EXPERIMENTS_GROUP, kinds={"duckdb"}, deps=[routing_table, outcome_labels],
          description="Per experiment and arm: reply, positive-reply, meeting and close rates, revenue per lead and "
                      "per message, the weighted score; fixed-horizon and always-valid intervals, chance to win, "
                      "SRM, and a decision (continue, promote, rollback, inconclusive) with its reason.")
def ab_test_results(context: dg.AssetExecutionContext, config: AbTestConfig,
                    warehouse: WarehouseResource) -> dg.MaterializeResult:
    table = load_routing()
    policy = PolicyConfig(alpha=config.alpha, n_star=config.n_star, max_cost_increase=config.max_cost_increase)
    summary, metric_rows = [], []
    with warehouse.connect() as con:
        con.execute(AB_DDL)
        for family, spec in sorted(table.get("families", {}).items()):
            arms = {a["ab_group"]: a for a in spec["arms"]}
            if "challenger" not in arms:
                continue
            allocation = family_allocation(spec)
            logged = allocations_logged(con, spec["experiment_id"])
            if not logged and challenger_has_messages(con, arms["challenger"]["model_id"]):
                context.log.warning(f"{family}: messages do not record metadata.allocation; comparing all routed "
                                    "messages, which mixes rollout steps")
                allocation = None
            elif not logged:  # just published: compared on its own traffic, of which there is none yet
                context.log.info(f"{family}: no message sent through experiment {spec['experiment_id']} yet")
            stats = arm_statistics(con, arms["challenger"]["model_id"], arms["champion"]["model_id"], allocation)
            weights = {g: float(arms[g]["traffic_pct"]) for g in ("challenger", "champion")}
            decision = decide(stats, weights, policy)
            context.log.info(f"{family}: {decision.decision} - {decision.reason}")
            champion_reply = stats["reply_rate"]["champion"]
            smaller = min(decision.leads.values())
            mde = (minimum_detectable_effect(champion_reply.mean, smaller)
                   if 0 < champion_reply.mean < 1 and smaller > 0 else None)
            summary.append((family, arms["challenger"]["model_id"], allocation or "all (not logged)",
                            decision.leads["challenger"],
                            decision.leads["champion"], f"{mde:.4f}" if mde is not None else "",
                            decision.decision, decision.reason))
            for m in decision.metrics or [None]:
                con.execute("INSERT INTO ab_test_results VALUES (now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                            "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [family, spec["experiment_id"], arms["challenger"]["model_id"],
                             arms["champion"]["model_id"], decision.decision, decision.reason, decision.srm_p_value,
                             decision.leads["challenger"], decision.leads["champion"],
                             *(([m.metric, m.challenger, m.champion, m.lift, m.relative_lift, m.ci_low, m.ci_high,
                                 m.p_value, m.p_adjusted, m.seq_low, m.seq_high, m.chance_to_win, m.expected_loss,
                                 m.exact_test]) if m else [None] * 14)])
                if m:
                    metric_rows.append((family, m.metric, round(m.challenger, 4), round(m.champion, 4),
                                        round(m.lift, 4), f"[{m.seq_low:.4f}, {m.seq_high:.4f}]",
                                        round(m.p_adjusted, 4) if m.p_adjusted is not None else None,
                                        round(m.chance_to_win, 3)))
    return dg.MaterializeResult(metadata={
        "experiments": len(summary),
        "decisions": dg.MetadataValue.md(md_table(
            ["family", "challenger", "allocation", "challenger leads", "champion leads", "reply-rate MDE (80% power)",
             "decision", "reason"], summary)),
        "metrics": dg.MetadataValue.md(md_table(
            ["family", "metric", "challenger", "champion", "lift", "always-valid CI", "Holm p", "P(win)"],
            metric_rows))})


class DecisionConfig(dg.Config):
    default_model: str = "gpt-4o-mini-2024-07-18"
    rollout_steps: list[float] = Field(default_factory=lambda: list(DEFAULT_ROLLOUT_STEPS),
                                       description="Challenger traffic shares, in order; the last promotes.")


@dg.asset(group_name=EXPERIMENTS_GROUP, kinds={"duckdb", "mlflow"}, deps=[ab_test_results],
          description="Applies each experiment's latest decision: promote moves the challenger to the next rollout "
                      "step and, at the last, makes it the champion (registry, MLflow aliases, routing); rollback "
                      "archives the challenger and routes everything to the champion.")
def experiment_decisions(context: dg.AssetExecutionContext, config: DecisionConfig, warehouse: WarehouseResource,
                         mlflow: MlflowResource) -> dg.MaterializeResult:
    actions = []
    with warehouse.connect() as con:
        con.execute(AB_DDL)
        latest = con.execute("""
            SELECT family, challenger, champion, decision, reason FROM ab_test_results
            QUALIFY row_number() OVER (PARTITION BY family ORDER BY evaluated_at DESC) = 1""").fetchall()
        for family, challenger, champion, decision, reason in latest:
            row = con.execute("SELECT status, traffic_pct, mlflow_model_version FROM model_registry WHERE model_id = ?",
                              [challenger]).fetchone()
            if row is None or row[0] != "ready":
                continue  # already acted on, or replaced
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
            elif decision == "rollback":
                registry.set_status(con, challenger, "archived", traffic_pct=0.0, ab_group="rolled_back")
                champion_version = con.execute("SELECT mlflow_model_version FROM model_registry WHERE model_id = ?",
                                               [champion]).fetchone()
                _sync(mlflow, family, champion_version[0] if champion_version else None, None, context)
                actions.append((family, challenger, "rolled back", reason))
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
