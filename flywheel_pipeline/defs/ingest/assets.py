"""Ingestion assets: one per landing source, each named after the warehouse table it loads."""

import dagster as dg

from flywheel_pipeline import paths
from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.landing_digest import record_taken
from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.resources import (WAREHOUSE_POOL, LabelPolicyResource, LandingZoneResource,
                                              WarehouseResource)
from flywheel_pipeline.warehouse.ingest import IngestResult, attribute_unlinked, ingest_source
from flywheel_pipeline.warehouse.ingest_summary import BREAKDOWNS, source_summary

INGEST_GROUP = "ingest"
# the metadata entry that shows each source's breakdown
_BREAKDOWN_ENTRY = {"messages": "messages_per_model", "sendgrid": "events_by_type",
                    "crm": "events_by_type_and_attribution", "feedback": "ratings_distribution",
                    "council_pairs": "pairs_by_task_and_judge"}


def _ingest(context: dg.AssetExecutionContext, warehouse: WarehouseResource, landing: LandingZoneResource,
            source: str, label_policy: LabelPolicyResource | None = None) -> dg.MaterializeResult:
    """Ingest one source (and attribute its unlinked rows when it has a policy), then report. The
    source's landing digest is taken before ingestion lists the files, and recorded after it, so the
    landing sensor never passes over a file that landed meanwhile."""
    store = landing.store()
    digest = landing_zone.fingerprint(store, [source])
    with warehouse.connect() as con:
        result = ingest_source(con, store, source, progress=context.log.info)
        attributed = (attribute_unlinked(con, "crm_events" if source == "crm" else source, label_policy.policy())
                      if label_policy is not None else None)
        summary = source_summary(con, source)
    record_taken(paths.landing_ingested_path(), store, warehouse.database, digest)
    return dg.MaterializeResult(metadata=_metadata(context, source, result, summary, attributed))


def _metadata(context: dg.AssetExecutionContext, source: str, result: IngestResult, summary, attributed
              ) -> dict[str, object]:
    if result.changed_files:
        context.log.warning(
            f"{len(result.changed_files)} already-ingested {source} file(s) changed size, which breaks the "
            f"landing contract (files are immutable); they were not re-read: {result.changed_files[:5]}")
    metadata: dict[str, object] = {
        "dagster/row_count": dg.MetadataValue.int(summary.rows),
        **{k: v for k, v in result.as_metadata().items() if k != "quarantine_reasons"},
        "quarantine_reasons": dg.MetadataValue.json(result.quarantine_reasons),
        "changed_files_ignored": len(result.changed_files),
        "latest_files": dg.MetadataValue.md(md_table(["file", "lines", "valid", "quarantined", "batch"],
                                                     summary.recent_files)),
    }
    if source in BREAKDOWNS:
        header, _ = BREAKDOWNS[source]
        metadata[_BREAKDOWN_ENTRY[source]] = dg.MetadataValue.md(md_table(header, summary.breakdown))
    if source == "sendgrid":
        metadata["duplicate_ratio"] = round(result.duplicates / result.lines, 4) if result.lines else 0.0
    if attributed is not None:
        metadata["newly_attributed"] = attributed
        metadata["unattributed_waiting"] = summary.unlinked
    return metadata


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="Sent-message records from landing/messages (unique (organization_id, message_id)).")
def messages(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
             landing: LandingZoneResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "messages")


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="SendGrid Event Webhook events from landing/sendgrid, de-duplicated on (organization, "
                      "sg_event_id).")
def email_events(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 landing: LandingZoneResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "sendgrid")


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[messages],
          description="Normalized CRM events from landing/crm; events without message_id are "
                      "attributed to the lead's (or email's) latest earlier message.")
def crm_events(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
               landing: LandingZoneResource, label_policy: LabelPolicyResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "crm", label_policy)


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"}, deps=[messages],
          description="Reply texts from landing/replies; replies without message_id are attributed "
                      "by the sender's address.")
def replies(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
            landing: LandingZoneResource, label_policy: LabelPolicyResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "replies", label_policy)


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="Reviewed reply labels from landing/reply_labels (`flywheel replies correct`); the "
                      "latest per reply overrides the classifier in reply_intents.")
def reply_labels(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                 landing: LandingZoneResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "reply_labels")


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="People's 1-5 ratings of a message from landing/feedback (POST /feedback), unique "
                      "(organization, feedback_id), attached to the message of their organization. They sit "
                      "beside the outcome labels: labelling does not read them.")
def feedback(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
             landing: LandingZoneResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "feedback")


@dg.asset(group_name=INGEST_GROUP, pool=WAREHOUSE_POOL, kinds={"duckdb"},
          description="The AI council's preference pairs from landing/council_pairs (POST /council): the answer "
                      "the judge preferred and one it scored at least the pair margin lower, with models, scores, "
                      "the judge and whether judge_calibration trusted it; unique (organization, pair_id). The DPO "
                      "dataset includes them only when preference_pairs' include_council_pairs is on.")
def council_pairs(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  landing: LandingZoneResource) -> dg.MaterializeResult:
    return _ingest(context, warehouse, landing, "council_pairs")
