"""Outcome assets: reply understanding and per-message outcome labels."""

from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.label_policy import STAGES, parse_as_of
from flywheel_pipeline.core.markdown import md_bar_chart, md_table
from flywheel_pipeline.defs.ingest.assets import crm_events, email_events, messages, replies, reply_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, LabelPolicyResource, WarehouseResource
from flywheel_pipeline.warehouse.label_summary import intent_summary, label_summary
from flywheel_pipeline.warehouse.labels import refresh_labels
from flywheel_pipeline.warehouse.reply_intents import classify_new_replies, pipeline_classifier

OUTCOMES_GROUP = "outcomes"


class ReplyIntentsConfig(dg.Config):
    classifier: str | None = Field(
        None, description="Reply classifier by name ('cue_model', 'rule_based', 'llm'); default: the "
                          "FLYWHEEL_REPLY_CLASSIFIER environment variable, else 'cue_model'.")


@dg.asset(group_name=OUTCOMES_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb", "python"}, deps=[replies, reply_labels],
          description="Sentiment, intent, confidence and auto-reply flag for every reply, with the "
                      "classifier and version that decided them (offline cue_model by default; a reply "
                      "is classified again only when the classifier or its version changes).")
def reply_intents(context: dg.AssetExecutionContext, config: ReplyIntentsConfig,
                  warehouse: WarehouseResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = classify_new_replies(con, pipeline_classifier(con, config.classifier), progress=context.log.info)
        summary = intent_summary(con)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(summary.replies),
        "classified_now": result.classified,
        "reclassified_now": result.reclassified,
        "changed_by_reclassifying": result.changed,
        "relinked_now": result.relinked,
        "auto_replies_now": result.auto_replies,
        "classifier": result.classifier,
        "set_from_reviewed_labels_now": result.reviewed,
        "intents": dg.MetadataValue.md(md_table(["intent", "sentiment", "replies"], summary.by_intent)),
    })


class OutcomeLabelsConfig(dg.Config):
    as_of: str | None = Field(
        None, description="ISO 8601 time that maturity is measured against (default: now, UTC).")
    full_relabel: bool = Field(
        False, description="Rebuild every label from all events instead of folding in new ones.")


def _parse_as_of(value: str | None) -> datetime:
    if not value:
        return datetime.now(timezone.utc)
    try:
        return parse_as_of(value)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc


@dg.asset(group_name=OUTCOMES_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          deps=[messages, email_events, crm_events, reply_intents],
          description="One row per message: funnel flags (human signals only), reply sentiment, "
                      "quality_score in [0, 1] and is_mature. Incremental: cost follows new events.")
def outcome_labels(context: dg.AssetExecutionContext, config: OutcomeLabelsConfig,
                   warehouse: WarehouseResource, label_policy: LabelPolicyResource) -> dg.MaterializeResult:
    policy = label_policy.policy()
    with warehouse.connect() as con:
        run = refresh_labels(con, policy, as_of=_parse_as_of(config.as_of), full=config.full_relabel)
        summary = label_summary(con)
    context.log.info(f"label run {run.label_run_id}: folded {run.folded_events} new events, "
                     f"relabelled {run.touched_messages} messages in {run.seconds:.2f}s "
                     f"({'full' if run.full_relabel else 'incremental'})")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(summary.labels),
        "mature_labels": summary.mature,
        "immature_labels": summary.labels - summary.mature,
        "mean_quality_score": summary.mean_quality_score,
        "label_run_id": run.label_run_id,
        "mode": "full relabel" if run.full_relabel else
                ("policy changed: relabel from state" if run.policy_changed else "incremental"),
        "new_events_folded": run.folded_events,
        "messages_relabelled": run.touched_messages,
        "as_of": run.as_of.isoformat() + "Z",
        "seconds": round(run.seconds, 3),
        "policy_fingerprint": policy.fingerprint(),
        "events_for_unknown_messages": dg.MetadataValue.int(summary.events_for_unknown_messages),
        "deal_value_total": summary.deal_value_total,
        "deepest_stage_counts": dg.MetadataValue.md(md_bar_chart([(s, summary.stages.get(s, 0)) for s in STAGES])),
        "funnel_flags": dg.MetadataValue.md(md_table(["signal", "messages"], summary.flags)),
        "quality_score_distribution": dg.MetadataValue.md(md_bar_chart(
            [(f"[{b / 10:.1f}, {(b + 1) / 10:.1f}{']' if b == 9 else ')'}", n) for b, n in summary.score_buckets])),
        "per_model_mature": dg.MetadataValue.md(md_table(
            ["model_id", "messages", "mature", "mean score", "reply rate", "meeting rate", "deals"],
            summary.per_model)),
    })
