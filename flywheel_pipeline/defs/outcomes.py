"""Outcome assets: reply understanding and per-message outcome labels, with their checks."""


from datetime import datetime, timezone

import dagster as dg
from pydantic import Field

from flywheel_pipeline.core.label_policy import STAGES, parse_as_of
from flywheel_pipeline.defs.ingest import crm_events, email_events, messages, replies, reply_labels
from flywheel_pipeline.defs.metadata import md_bar_chart, md_table
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, LabelPolicyResource, WarehouseResource
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
        classifier = pipeline_classifier(con, config.classifier)
        result = classify_new_replies(con, classifier, progress=context.log.info)
        totals = con.execute("SELECT intent, sentiment, count(*) FROM reply_intents GROUP BY ALL ORDER BY 3 DESC"
                             ).fetchall()
        total = con.execute("SELECT count(*) FROM reply_intents").fetchone()[0]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(int(total)),
        "classified_now": result.classified,
        "reclassified_now": result.reclassified,
        "changed_by_reclassifying": result.changed,
        "relinked_now": result.relinked,
        "auto_replies_now": result.auto_replies,
        "classifier": result.classifier,
        "set_from_reviewed_labels_now": result.reviewed,
        "intents": dg.MetadataValue.md(md_table(["intent", "sentiment", "replies"], totals)),
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
        context.log.info(f"label run {run.label_run_id}: folded {run.folded_events} new events, "
                         f"relabelled {run.touched_messages} messages in {run.seconds:.2f}s "
                         f"({'full' if run.full_relabel else 'incremental'})")
        total, mature, mean_score = con.execute(
            "SELECT count(*), count(*) FILTER (is_mature), avg(quality_score) FROM outcome_labels").fetchone()
        stages = dict(con.execute("SELECT stage, count(*) FROM outcome_labels GROUP BY 1").fetchall())
        buckets = con.execute("""
            SELECT least(floor(quality_score * 10), 9)::INT AS b, count(*) FROM outcome_labels
            GROUP BY 1 ORDER BY 1""").fetchall()
        flags = con.execute("""
            SELECT count(*) FILTER (delivered), count(*) FILTER (bounced), count(*) FILTER (opened),
                   count(*) FILTER (clicked), count(*) FILTER (replied), count(*) FILTER (positive_reply),
                   count(*) FILTER (meeting_booked), count(*) FILTER (meeting_completed),
                   count(*) FILTER (deal_closed), count(*) FILTER (unsubscribed),
                   count(*) FILTER (spam_reported), sum(machine_opens), sum(scanner_clicks), sum(auto_replies),
                   coalesce(sum(deal_value), 0)
            FROM outcome_labels""").fetchone()
        per_model = con.execute("""
            SELECT model_id, count(*) AS messages, count(*) FILTER (is_mature) AS mature,
                   round(avg(quality_score) FILTER (is_mature), 4),
                   round(avg(replied::INT) FILTER (is_mature), 4),
                   round(avg(meeting_booked::INT) FILTER (is_mature), 4),
                   count(*) FILTER (is_mature AND deal_closed)
            FROM outcome_labels GROUP BY 1 ORDER BY 4 DESC NULLS LAST""").fetchall()
        orphans = con.execute("SELECT count(*) FROM message_state s ANTI JOIN messages m USING (message_key)"
                              ).fetchone()[0]
    names = ["delivered", "bounced", "opened (human)", "clicked (human)", "replied (human)",
             "positive_reply", "meeting_booked", "meeting_completed", "deal_closed", "unsubscribed",
             "spam_reported", "machine opens ignored", "scanner clicks ignored", "auto-replies ignored"]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(int(total)),
        "mature_labels": int(mature),
        "immature_labels": int(total - mature),
        "mean_quality_score": float(round(mean_score or 0.0, 4)),
        "label_run_id": run.label_run_id,
        "mode": "full relabel" if run.full_relabel else
                ("policy changed: relabel from state" if run.policy_changed else "incremental"),
        "new_events_folded": run.folded_events,
        "messages_relabelled": run.touched_messages,
        "as_of": run.as_of.isoformat() + "Z",
        "seconds": round(run.seconds, 3),
        "policy_fingerprint": policy.fingerprint(),
        "events_for_unknown_messages": dg.MetadataValue.int(int(orphans)),
        "deal_value_total": round(float(flags[-1]), 2),
        "deepest_stage_counts": dg.MetadataValue.md(md_bar_chart([(s, int(stages.get(s, 0))) for s in STAGES])),
        "funnel_flags": dg.MetadataValue.md(md_table(["signal", "messages"], zip(names, flags[:-1]))),
        "quality_score_distribution": dg.MetadataValue.md(md_bar_chart(
            [(f"[{b / 10:.1f}, {(b + 1) / 10:.1f}{']' if b == 9 else ')'}", int(n)) for b, n in buckets])),
        "per_model_mature": dg.MetadataValue.md(md_table(
            ["model_id", "messages", "mature", "mean score", "reply rate", "meeting rate", "deals"],
            per_model)),
    })


# ---- data contracts ---------------------------------------------------------------------

def _check(passed: bool, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
           **metadata: object) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=bool(passed), severity=severity, metadata=metadata)


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="Exactly one label per ingested message.")
def one_label_per_message(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        labels, distinct, msgs, unknown = con.execute("""
            SELECT (SELECT count(*) FROM message_labels), (SELECT count(DISTINCT message_key) FROM message_labels),
                   (SELECT count(*) FROM messages),
                   (SELECT count(*) FROM message_labels l ANTI JOIN messages m USING (message_key))""").fetchone()
    return _check(labels == distinct == msgs and unknown == 0, labels=labels, distinct_messages=distinct,
                  messages=msgs, labels_without_message=unknown)


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="quality_score is present and within [0, 1].")
def quality_score_in_range(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        bad, lo, hi = con.execute("""
            SELECT count(*) FILTER (quality_score IS NULL OR quality_score < 0 OR quality_score > 1),
                   min(quality_score), max(quality_score) FROM outcome_labels""").fetchone()
    return _check(bad == 0, out_of_range=int(bad), min=float(lo or 0), max=float(hi or 0))


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="Funnel flags are consistent: a message is not both delivered and bounced; a "
                            "completed meeting was booked; deal_value is set exactly for closed deals.")
def funnel_flags_consistent(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        both, completed_not_booked, value_mismatch = con.execute("""
            SELECT count(*) FILTER (delivered AND bounced),
                   count(*) FILTER (meeting_completed AND NOT meeting_booked),
                   count(*) FILTER ((deal_value IS NOT NULL) <> deal_closed)
            FROM outcome_labels""").fetchone()
    return _check(both == completed_not_booked == value_mismatch == 0, delivered_and_bounced=int(both),
                  completed_not_booked=int(completed_not_booked), deal_value_mismatch=int(value_mismatch))


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="is_mature matches the policy at the label run's as-of time.")
def maturity_consistent(warehouse: WarehouseResource, label_policy: LabelPolicyResource) -> dg.AssetCheckResult:
    days = label_policy.policy().maturity_days
    with warehouse.connect() as con:
        as_of = con.execute("SELECT as_of FROM label_runs ORDER BY label_run_id DESC LIMIT 1").fetchone()
        if as_of is None:
            return _check(False, reason="no label run recorded")
        wrong = con.execute(f"""
            SELECT count(*) FROM outcome_labels
            WHERE is_mature IS DISTINCT FROM (is_terminal OR sent_at <= ?::TIMESTAMP - to_days({int(days)}))""",
                            [as_of[0]]).fetchone()[0]
    return _check(wrong == 0, wrong_maturity=int(wrong), as_of=str(as_of[0]), maturity_days=days)


@dg.asset_check(asset=outcome_labels, pool=WAREHOUSE_POOL,
                description="At most 1% of landed lines were quarantined, and no landing file was refused "
                            "whole (warning).")
def quarantine_rate(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        lines, quarantined = con.execute(
            "SELECT coalesce(sum(lines), 0), coalesce(sum(quarantined), 0) FROM landing_files").fetchone()
        reasons = con.execute("SELECT source, reason, count(*) FROM quarantine GROUP BY ALL ORDER BY 3 DESC LIMIT 20"
                              ).fetchall()
        # a file refused whole (line 0, e.g. too large to read) holds lines nobody has counted
        refused = con.execute("SELECT source || '/' || source_file FROM quarantine WHERE line_no = 0 "
                              "ORDER BY 1").fetchall()
    rate = quarantined / lines if lines else 0.0
    return _check(rate <= 0.01 and not refused, dg.AssetCheckSeverity.WARN, lines=int(lines),
                  quarantined=int(quarantined), rate=round(rate, 5), files_refused=[r[0] for r in refused],
                  reasons=dg.MetadataValue.md(md_table(["source", "reason", "lines"], reasons)))


@dg.asset_check(asset=email_events, pool=WAREHOUSE_POOL,
                description="Of the events in the latest SendGrid batch, at most 5% refer to a message "
                            "not (yet) ingested (warning). Only new events are read.")
def email_events_reference_messages(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        total, orphans = con.execute("""
            SELECT count(*), count(*) FILTER (m.message_id IS NULL)
            FROM email_events e LEFT JOIN messages m USING (message_id)
            WHERE e.batch_id = (SELECT max(batch_id) FROM ingest_batches
                                WHERE kind = 'ingest' AND source = 'sendgrid' AND accepted > 0)""").fetchone()
    rate = orphans / total if total else 0.0
    return _check(rate <= 0.05, dg.AssetCheckSeverity.WARN, events=int(total), orphan_events=int(orphans),
                  rate=round(rate, 5))


OUTCOME_ASSETS = [reply_intents, outcome_labels]
OUTCOME_CHECKS = [one_label_per_message, quality_score_in_range, funnel_flags_consistent, maturity_consistent,
                  quarantine_rate, email_events_reference_messages]
