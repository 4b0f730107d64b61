"""The model leaderboard and flywheel velocity."""

import math
from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.leaderboard import board, weekly_trend
from flywheel_pipeline.core.markdown import md_bar_chart, md_table
from flywheel_pipeline.core.models import DEFAULT_MODEL
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MlflowResource, WarehouseResource
from flywheel_pipeline.core.atomic_json import write_json_atomic
from flywheel_pipeline.paths import leaderboard_path
from flywheel_pipeline.tracking import log_leaderboard, run_url
from flywheel_pipeline.warehouse import model_registry as registry
from flywheel_pipeline.warehouse.leaderboard import WEEKLY_HEADER, model_outcomes, weekly_velocity

LEADERBOARD_GROUP = "leaderboard"


class LeaderboardConfig(dg.Config):
    baseline_model: str = Field(DEFAULT_MODEL, description="Lifts are measured against this model.")
    min_messages: int = Field(300, description="Models with fewer mature messages are listed but not ranked.")


def _ci(v: tuple[float, float]) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]"


def _markdown(entries: list[dict], baseline_model: str) -> str:
    return md_table(
        ["rank", "model", "leads", "messages", "reply (95% CI)", "meeting (95% CI)", "close (95% CI)", "revenue",
         "weighted score", "lift vs baseline (95% CI)"],
        [(b.get("rank", "n<min"), b["model"], b["leads"], b["messages"], f"{b['reply']:.3f} {_ci(b['reply_ci'])}",
          f"{b['meeting']:.3f} {_ci(b['meeting_ci'])}", f"{b['close']:.3f} {_ci(b['close_ci'])}",
          f"{b['revenue']:,.0f}", f"{b['score']:.4f}",
          "baseline" if b["model"] == baseline_model else
          (f"{b['lift']:+.4f} {_ci(b['lift_ci'])}" if b["lift"] is not None else "")) for b in
         sorted(entries, key=lambda b: (b.get("rank", math.inf), -b["score"]))])


@dg.asset(group_name=LEADERBOARD_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "mlflow"}, deps=[outcome_labels],
          description="Every model, over all messages and per organization: messages, reply/meeting/close rates per "
                      "mature message with Wilson intervals, revenue, lift of the weighted score against the baseline "
                      "with its interval, rank (minimum sample gate); the same numbers are logged to MLflow.")
def model_leaderboard(context: dg.AssetExecutionContext, config: LeaderboardConfig, warehouse: WarehouseResource,
                      mlflow: MlflowResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        entries, ranked = board(model_outcomes(con, per_organization=False), config.baseline_model,
                                config.min_messages)
        per_org = model_outcomes(con, per_organization=True)
        registry.update_outcome_metrics(con, entries)
    # each organization's own board, from its messages only: what GET /leaderboard shows its key
    organizations = {org: board([r for r in per_org if r.organization_id == org], config.baseline_model,
                                config.min_messages)[0]
                     for org in sorted({r.organization_id for r in per_org})}
    table = _markdown(entries, config.baseline_model)
    # whole model ids: a chart that cuts them cannot tell two fine-tunes of one base apart
    chart = md_bar_chart([(b["model"], round(b["score"] * 10_000)) for b in sorted(entries, key=lambda b: -b["score"])])
    metadata: dict[str, object] = {}
    try:
        run = log_leaderboard(mlflow.tracking_uri, entries, table)
        metadata["mlflow_run"] = dg.MetadataValue.url(run_url(mlflow.tracking_uri, run.experiment_id, run.run_id,
                                                              mlflow.ui_url))
        metadata["mlflow_run_id"] = run.run_id
    except Exception as exc:  # noqa: BLE001 - the leaderboard stands without MLflow; say so
        context.log.warning(f"leaderboard not logged to MLflow: {exc}")
    published = write_json_atomic({"generated_at": datetime.now(timezone.utc).isoformat(),
                                   "baseline_model": config.baseline_model, "min_messages": config.min_messages,
                                   "models": entries, "organizations": organizations}, leaderboard_path())
    return dg.MaterializeResult(metadata={
        "published": dg.MetadataValue.path(str(published)),
        "models": len(entries), "ranked": len(ranked), "min_messages": config.min_messages,
        "leader": ranked[0]["model"] if ranked else "",
        "leaderboard": dg.MetadataValue.md(table),
        "weighted_score_x10000": dg.MetadataValue.md(chart), **metadata})


@dg.asset(group_name=LEADERBOARD_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[outcome_labels],
          description="How fast the flywheel turns: weekly messages, mature outcomes, training-ready examples, "
                      "model versions, and the trend of the weighted score.")
def flywheel_velocity(warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        weeks = weekly_velocity(con)
    slope = weekly_trend([r[5] for r in weeks if r[5] is not None])
    return dg.MaterializeResult(metadata={
        "weeks": len(weeks), "weighted_score_trend_per_week": round(slope, 6),
        "weekly": dg.MetadataValue.md(md_table(
            WEEKLY_HEADER,
            [(str(r[0]), r[1], r[2], r[3], r[4], round(r[5], 4) if r[5] is not None else "") for r in weeks])),
        "training_ready_per_week": dg.MetadataValue.md(md_bar_chart([(str(r[0]), int(r[3])) for r in weeks]))})
