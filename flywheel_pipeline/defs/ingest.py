"""Ingestion assets: one per landing source, each named after the warehouse table it loads."""

import dagster as dg

from flywheel_pipeline.defs.metadata import md_table
from flywheel_pipeline.defs.resources import (WAREHOUSE_POOL, LabelPolicyResource, LandingZoneResource,
                                              WarehouseResource)
from flywheel_pipeline.warehouse.ingest import IngestResult, attribute_unlinked, ingest_source

INGEST_GROUP = "ingest"


def _report(context: dg.AssetExecutionContext, result: IngestResult, table: str,
            con, extra: dict[str, object] | None = None) -> dg.MaterializeResult:
    total = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    recent = con.execute(
        "SELECT file_name, lines, valid_lines, quarantined, batch_id FROM landing_files "
        "WHERE source = ? ORDER BY batch_id DESC, file_name DESC LIMIT 10", [result.source]).fetchall()
    if result.changed_files:
        context.log.warning(
            f"{len(result.changed_files)} already-ingested {result.source} file(s) changed size, which "
            f"breaks the landing contract (files are immutable); they were not re-read: "
            f"{result.changed_files[:5]}")
    metadata: dict[str, object] = {
        "dagster/row_count": dg.MetadataValue.int(int(total)),
        **{k: v for k, v in result.as_metadata().items() if k != "quarantine_reasons"},
        "quarantine_reasons": dg.MetadataValue.json(result.quarantine_reasons),
        "changed_files_ignored": len(result.changed_files),
        "latest_files": dg.MetadataValue.md(md_table(
            ["file", "lines", "valid", "quarantined", "batch"], recent)),
        **(extra or {}),
    }
    return dg.MaterializeResult(metadata=metadata)




@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="Sent-message records from landing/messages (unique message_id).")
def messages(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
             landing: LandingZoneResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = ingest_source(con, landing.root, "messages", progress=context.log.info)
        models = con.execute("SELECT model_id, count(*) FROM messages GROUP BY 1 ORDER BY 2 DESC").fetchall()
        return _report(context, result, "messages", con, {
            "messages_per_model": dg.MetadataValue.md(md_table(["model_id", "messages"], models))})


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="SendGrid Event Webhook events from landing/sendgrid, de-duplicated on sg_event_id.")
def email_events(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 landing: LandingZoneResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = ingest_source(con, landing.root, "sendgrid", progress=context.log.info)
        by_event = con.execute("SELECT event, count(*) FROM email_events GROUP BY 1 ORDER BY 2 DESC").fetchall()
        return _report(context, result, "email_events", con, {
            "events_by_type": dg.MetadataValue.md(md_table(["event", "events"], by_event)),
            "duplicate_ratio": round(result.duplicates / result.lines, 4) if result.lines else 0.0})


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[messages],
          description="Normalized CRM events from landing/crm; events without message_id are "
                      "attributed to the lead's (or email's) latest earlier message.")
def crm_events(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
               landing: LandingZoneResource, label_policy: LabelPolicyResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = ingest_source(con, landing.root, "crm", progress=context.log.info)
        attributed = attribute_unlinked(con, "crm_events", label_policy.policy())
        by = con.execute("SELECT type, coalesce(attribution, 'unattributed'), count(*) FROM crm_events "
                         "GROUP BY ALL ORDER BY 1, 2").fetchall()
        unlinked = con.execute("SELECT count(*) FROM crm_events WHERE message_id IS NULL").fetchone()[0]
        return _report(context, result, "crm_events", con, {
            "newly_attributed": attributed, "unattributed_waiting": int(unlinked),
            "events_by_type_and_attribution": dg.MetadataValue.md(
                md_table(["type", "attribution", "events"], by))})


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[messages],
          description="Reply texts from landing/replies; replies without message_id are attributed "
                      "by the sender's address.")
def replies(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
            landing: LandingZoneResource, label_policy: LabelPolicyResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = ingest_source(con, landing.root, "replies", progress=context.log.info)
        attributed = attribute_unlinked(con, "replies", label_policy.policy())
        unlinked = con.execute("SELECT count(*) FROM replies WHERE message_id IS NULL").fetchone()[0]
        return _report(context, result, "replies", con, {
            "newly_attributed": attributed, "unattributed_waiting": int(unlinked)})


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="Reviewed reply labels from landing/reply_labels (`flywheel replies correct`); the "
                      "latest per reply overrides the classifier in reply_intents.")
def reply_labels(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 landing: LandingZoneResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        result = ingest_source(con, landing.root, "reply_labels", progress=context.log.info)
        return _report(context, result, "reply_labels", con, {})


INGEST_ASSETS = [messages, email_events, crm_events, replies, reply_labels]
