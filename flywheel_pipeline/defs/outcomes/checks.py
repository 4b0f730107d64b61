"""The outcome labels' and ingestion's data contracts as Dagster checks (the queries are in
warehouse/label_checks.py)."""

import dagster as dg

from flywheel_pipeline.core.markdown import md_table
from flywheel_pipeline.defs.ingest.assets import email_events
from flywheel_pipeline.defs.outcomes.assets import outcome_labels
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, LabelPolicyResource, WarehouseResource
from flywheel_pipeline.warehouse import label_checks
from flywheel_pipeline.warehouse.label_checks import Contract


def _result(contract: Contract, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
            ) -> dg.AssetCheckResult:
    metadata: dict[str, object] = dict(contract.numbers)
    if contract.table is not None:
        metadata["reasons"] = dg.MetadataValue.md(md_table(*contract.table))
    return dg.AssetCheckResult(passed=bool(contract.passed), severity=severity, metadata=metadata)


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="Exactly one label per ingested message.")
def one_label_per_message(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        return _result(label_checks.one_label_per_message(con))


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="quality_score is present and within [0, 1].")
def quality_score_in_range(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        return _result(label_checks.quality_score_in_range(con))


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="Funnel flags are consistent: a message is not both delivered and bounced; a "
                            "completed meeting was booked; deal_value is set exactly for closed deals.")
def funnel_flags_consistent(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        return _result(label_checks.funnel_flags_consistent(con))


@dg.asset_check(asset=outcome_labels, blocking=True, pool=WAREHOUSE_POOL,
                description="is_mature matches the policy at the label run's as-of time.")
def maturity_consistent(warehouse: WarehouseResource, label_policy: LabelPolicyResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        return _result(label_checks.maturity_consistent(con, label_policy.policy().maturity_days))


@dg.asset_check(asset=outcome_labels, pool=WAREHOUSE_POOL,
                description="At most 1% of landed lines were quarantined, and no landing file was refused "
                            "whole (warning).")
def quarantine_rate(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        return _result(label_checks.quarantine_rate(con), dg.AssetCheckSeverity.WARN)


@dg.asset_check(asset=email_events, pool=WAREHOUSE_POOL,
                description="Of the events in the latest SendGrid batch, at most 5% refer to a message "
                            "not (yet) ingested (warning). Only new events are read.")
def email_events_reference_messages(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect() as con:
        return _result(label_checks.email_events_reference_messages(con), dg.AssetCheckSeverity.WARN)
