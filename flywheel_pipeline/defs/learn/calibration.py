"""judge_calibration: how well each judge (and people's ratings) predicts real outcomes on mature
messages; ``trusted`` says which judges may decide anything downstream (docs/learning.md)."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.calibration import ALL_TASK_TYPES, CalibrationConfig, calibrate, interval_label
from flywheel_pipeline.core.learn_plots import calibration_curves
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.ingest.assets import feedback
from flywheel_pipeline.defs.learn import LEARN_GROUP
from flywheel_pipeline.defs.learn.judgements import message_judgements, message_llm_judgements
from flywheel_pipeline.defs.learn.tracked import log_learn_table
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, MlflowResource, WarehouseResource
from flywheel_pipeline.warehouse.judge_calibration import auc_stats, decile_rows, write_calibration


class JudgeCalibrationConfig(dg.Config):
    alpha: float = Field(CalibrationConfig.alpha, description="Family-wise level of the run's simultaneous AUC "
                                                              "intervals (Bonferroni over the gated rows).")
    min_messages: int = Field(CalibrationConfig.min_messages,
                              description="A row with fewer mature, judged messages is never trusted.")
    min_events: int = Field(CalibrationConfig.min_events,
                            description="... nor one with fewer positives (or negatives) than this.")


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _calibration_md(rows, label: str) -> str:
    return md_table(
        ["judge", "version", "task type", "metric", "n", "positives", "rate", f"AUC ({label})", "Spearman (quality)",
         "trusted"],
        [(r.judge, r.criteria_version, r.task_type, r.metric, r.n, r.positives, _f(r.rate),
          "" if r.auc is None else f"{r.auc:.3f} [{r.auc_low:.3f}, {r.auc_high:.3f}]",
          "" if r.spearman is None else f"{r.spearman:+.3f} (p {r.spearman_p:.2g})" if r.spearman_p is not None
          else f"{r.spearman:+.3f}",
          "yes" if r.trusted else ("no" if r.gated else "no (too few)")) for r in rows])


def _deciles_md(deciles: list[dict]) -> str:
    return md_table(["judge", "version", "decile", "n", "mean score", "score range", "reply", "positive reply",
                     "meeting"],
                    [(d["judge"], d["criteria_version"], d["decile"], d["n"], _f(d["mean_score"], 2),
                      f"{d['min_score']:.2f}-{d['max_score']:.2f}", _f(d["reply_rate"]),
                      _f(d["positive_reply_rate"]), _f(d["meeting_rate"])) for d in deciles
                     if d["task_type"] == ALL_TASK_TYPES])


@dg.asset(group_name=LEARN_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "mlflow"},
          deps=[message_judgements, message_llm_judgements, feedback, outcome_labels],
          description="How well each judge (and people's ratings, judge 'human') predicts reply, positive reply "
                      "and meeting on mature, delivered messages, per task type and over all: AUC with simultaneous "
                      "DeLong intervals, Spearman with the quality score, outcome rates by score decile, n, and "
                      "`trusted` (interval above 0.5 with enough messages): only a trusted judge decides anything.")
def judge_calibration(context: dg.AssetExecutionContext, config: JudgeCalibrationConfig,
                      warehouse: WarehouseResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    settings = CalibrationConfig(alpha=config.alpha, min_messages=config.min_messages, min_events=config.min_events)
    computed_at = datetime.now(timezone.utc).replace(tzinfo=None)
    with warehouse.connect() as con:
        rows = calibrate(auc_stats(con), settings)
        deciles = decile_rows(con)
        write_calibration(con, rows, deciles, computed_at)
    gated = sum(r.gated for r in rows)
    label = interval_label(settings, gated)
    trusted = sorted({(r.judge, r.task_type, r.metric) for r in rows if r.trusted})
    if not rows:
        context.log.warning("no judged, mature, delivered message: judge_calibration is empty")
    table_md = _calibration_md(rows, label)
    deciles_md = _deciles_md(deciles)
    figures = {f"calibration_curve_{m}": calibration_curves(deciles, f"{m}_rate")
               for m in ("reply", "positive_reply", "meeting")} if deciles else {}
    logged = log_learn_table(context, mlflow, "judge_calibration", [r.row() for r in rows],
                             table_md + "\n\n" + deciles_md,
                             {"rows": len(rows), "trusted_rows": len(trusted), "gated_rows": gated},
                             figures=figures, tables={"judge_calibration_deciles": deciles})
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(len(rows)), "trusted_rows": len(trusted),
        "trusted": dg.MetadataValue.md("\n".join(f"- `{j}` on {t}: {m}" for j, t, m in trusted)
                                       or "No judge is trusted: none decides anything downstream."),
        "calibration": dg.MetadataValue.md(table_md),
        "deciles_all_task_types": dg.MetadataValue.md(deciles_md),
        "interval": label, "min_messages": config.min_messages, "min_events": config.min_events,
        **logged})
