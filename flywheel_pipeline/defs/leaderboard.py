"""The model leaderboard and flywheel velocity."""

import math
import re
from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.stats.frequentist import welch_diff, wilson_interval
from flywheel_pipeline.core.stats.sufficient import ArmStats
from flywheel_pipeline.defs.metadata import md_bar_chart, md_table
from flywheel_pipeline.defs.outcomes import outcome_labels
from flywheel_pipeline.defs.resources import MlflowResource, WarehouseResource
from flywheel_pipeline.published import leaderboard_path, write_json_atomic
from flywheel_pipeline.warehouse import model_registry as registry

LEADERBOARD_GROUP = "leaderboard"

# Rates per mature message: models reach leads with different numbers of messages outside
# an experiment, so per-lead rates would reward the model that wrote more often. The A/B
# analysis (experiments) is where the lead is the unit.
_PER_MODEL = """
SELECT {organization} AS organization_id, model_id, count(DISTINCT lead_id) AS leads, count(*) AS messages, count(*) FILTER (replied),
       count(*) FILTER (meeting_booked), count(*) FILTER (deal_closed), sum(coalesce(deal_value, 0)),
       sum(0.5 * deal_closed::INT + 0.3 * meeting_booked::INT + 0.2 * replied::INT),
       sum(power(0.5 * deal_closed::INT + 0.3 * meeting_booked::INT + 0.2 * replied::INT, 2))
FROM outcome_labels WHERE is_mature GROUP BY ALL ORDER BY organization_id, model_id
"""


def _board(rows: list[tuple], config: "LeaderboardConfig") -> tuple[list[dict], list[dict]]:
    """The leaderboard of one scope (all messages, or one organization's): every model's row
    and the ranked ones."""
    score = {r[1]: ArmStats(int(r[3]), float(r[8]), float(r[9])) for r in rows}
    base = score.get(config.baseline_model)
    board = []
    for _, model, leads, messages, reply, meeting, close, revenue, _, _ in rows:
        s = score[model]
        lift = welch_diff(s, base) if base is not None and model != config.baseline_model and base.n > 1 \
            and s.n > 1 else None
        board.append({
            "model": model, "leads": int(leads), "messages": int(messages),
            "reply": reply / messages, "reply_ci": wilson_interval(int(reply), int(messages)),
            "meeting": meeting / messages, "meeting_ci": wilson_interval(int(meeting), int(messages)),
            "close": close / messages, "close_ci": wilson_interval(int(close), int(messages)),
            "revenue": float(revenue), "score": s.mean,
            "lift": lift.estimate if lift else None, "lift_ci": (lift.ci_low, lift.ci_high) if lift else None,
            "ranked": messages >= config.min_messages})
    ranked = sorted((b for b in board if b["ranked"]), key=lambda b: -b["score"])
    for rank, b in enumerate(ranked, 1):
        b["rank"] = rank
    return board, ranked


class LeaderboardConfig(dg.Config):
    baseline_model: str = Field("gpt-4o-mini-2024-07-18", description="Lifts are measured against this model.")
    min_messages: int = Field(300, description="Models with fewer mature messages are listed but not ranked.")


@dg.asset(group_name=LEADERBOARD_GROUP, kinds={"duckdb", "mlflow"}, deps=[outcome_labels],
          description="Every model, over all messages and per organization: messages, reply/meeting/close rates per mature message with Wilson intervals, "
                      "revenue, lift of the weighted score against the baseline with its interval, rank (minimum "
                      "sample gate); the same numbers are logged to MLflow.")
def model_leaderboard(context: dg.AssetExecutionContext, config: LeaderboardConfig, warehouse: WarehouseResource,
                      mlflow: MlflowResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        board, ranked = _board(con.execute(_PER_MODEL.format(organization="NULL")).fetchall(), config)
        # each organization's own board, from its messages only: what GET /leaderboard shows its key
        per_org = con.execute(_PER_MODEL.format(organization="organization_id")).fetchall()
        organizations = {org: _board([r for r in per_org if r[0] == org], config)[0]
                         for org in sorted({r[0] for r in per_org})}
        con.execute(registry.DDL)
        for b in board:
            con.execute("UPDATE model_registry SET reply_rate = ?, meeting_rate = ?, close_rate = ?, "
                        "weighted_score = ?, messages_sent = ? WHERE model_id = ?",
                        [b["reply"], b["meeting"], b["close"], b["score"], b["messages"], b["model"]])

    def ci(v):
        return f"[{v[0]:.3f}, {v[1]:.3f}]"

    table = md_table(
        ["rank", "model", "leads", "messages", "reply (95% CI)", "meeting (95% CI)", "close (95% CI)", "revenue",
         "weighted score", "lift vs baseline (95% CI)"],
        [(b.get("rank", "n<min"), b["model"], b["leads"], b["messages"], f"{b['reply']:.3f} {ci(b['reply_ci'])}",
          f"{b['meeting']:.3f} {ci(b['meeting_ci'])}", f"{b['close']:.3f} {ci(b['close_ci'])}",
          f"{b['revenue']:,.0f}", f"{b['score']:.4f}",
          "baseline" if b["model"] == config.baseline_model else
          (f"{b['lift']:+.4f} {ci(b['lift_ci'])}" if b["lift"] is not None else "")) for b in
         sorted(board, key=lambda b: (b.get("rank", math.inf), -b["score"]))])
    chart = md_bar_chart([(b["model"][-40:], round(b["score"] * 10_000)) for b in
                          sorted(board, key=lambda b: -b["score"])])
    run_id = _log_to_mlflow(mlflow.tracking_uri, board, table, context)
    published = write_json_atomic({"generated_at": datetime.now(timezone.utc).isoformat(),
                                   "baseline_model": config.baseline_model, "min_messages": config.min_messages,
                                   "models": board, "organizations": organizations}, leaderboard_path())
    return dg.MaterializeResult(metadata={
        "published": dg.MetadataValue.path(str(published)),
        "models": len(board), "ranked": len(ranked), "min_messages": config.min_messages,
        "leader": ranked[0]["model"] if ranked else "",
        "leaderboard": dg.MetadataValue.md(table),
        "weighted_score_x10000": dg.MetadataValue.md(chart),
        "mlflow_run_id": run_id or ""})


def _log_to_mlflow(tracking_uri: str, board: list[dict], table: str, context) -> str | None:
    try:
        import mlflow

        from flywheel_pipeline.tracking import ensure_experiment

        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(experiment_id=ensure_experiment(tracking_uri), run_name="leaderboard",
                              tags={"flywheel.kind": "leaderboard"}) as run:
            for b in board:
                key = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", b["model"])[:200]  # MLflow's allowed characters
                mlflow.log_metrics({f"{key}/weighted_score": b["score"], f"{key}/reply_rate": b["reply"],
                                    f"{key}/meeting_rate": b["meeting"], f"{key}/close_rate": b["close"],
                                    f"{key}/leads": b["leads"]})
            mlflow.log_text(table, "leaderboard.md")
            return run.info.run_id
    except Exception as exc:  # noqa: BLE001 - the leaderboard stands without MLflow; say so
        context.log.warning(f"leaderboard not logged to MLflow: {exc}")
        return None


@dg.asset(group_name=LEADERBOARD_GROUP, kinds={"duckdb"}, deps=[outcome_labels],
          description="How fast the flywheel turns: weekly messages, mature outcomes, training-ready examples, "
                      "model versions, and the trend of the weighted score.")
def flywheel_velocity(warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        con.execute(registry.DDL)
        weeks = con.execute("""
            WITH w AS (
                SELECT date_trunc('week', sent_at)::DATE AS week, count(*) AS messages,
                       count(*) FILTER (is_mature) AS mature, count(*) FILTER (is_mature AND quality_score >= 0.6
                                                                               AND NOT bounced) AS training_ready,
                       avg(0.5 * deal_closed::INT + 0.3 * meeting_booked::INT + 0.2 * replied::INT)
                           FILTER (is_mature) AS weighted_score
                FROM outcome_labels GROUP BY 1),
            v AS (SELECT date_trunc('week', created_at)::DATE AS week, count(*) AS versions
                  FROM model_registry GROUP BY 1)
            SELECT w.week, w.messages, w.mature, w.training_ready, coalesce(v.versions, 0), w.weighted_score
            FROM w LEFT JOIN v USING (week) ORDER BY w.week""").fetchall()
    trend = [r[5] for r in weeks if r[5] is not None]
    slope = 0.0
    if len(trend) >= 2:
        n = len(trend)
        mean_x, mean_y = (n - 1) / 2, sum(trend) / n
        slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(trend)) / sum((i - mean_x) ** 2 for i in range(n))
    return dg.MaterializeResult(metadata={
        "weeks": len(weeks), "weighted_score_trend_per_week": round(slope, 6),
        "weekly": dg.MetadataValue.md(md_table(
            ["week", "messages", "mature outcomes", "training-ready", "model versions", "weighted score"],
            [(str(r[0]), r[1], r[2], r[3], r[4], round(r[5], 4) if r[5] is not None else "") for r in weeks])),
        "training_ready_per_week": dg.MetadataValue.md(md_bar_chart([(str(r[0]), int(r[3])) for r in weeks]))})


LEADERBOARD_ASSETS = [model_leaderboard, flywheel_velocity]
