"""The ``lake_maintenance`` op: DuckLake maintenance (warehouse/lake_maintenance.py) with the
snapshots the exports name kept, its counts before and after as the output's metadata. On the
DuckDB file backend it runs ``CHECKPOINT`` only and says so. An op, not an asset: it changes how
the warehouse is stored, not what it holds."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
from pydantic import Field

from flywheel_pipeline import paths
from flywheel_pipeline.defs.resources import WAREHOUSE_POOL, ExportsResource, WarehouseResource
from flywheel_pipeline.warehouse.datasets import exported_snapshots
from flywheel_pipeline.warehouse.lake_maintenance import maintain


class LakeMaintenanceConfig(dg.Config):
    retention_days: int | None = Field(None, ge=1, description="Expire snapshots older than this many days "
                                                               "(default: FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS, 7).")


# in the warehouse pool like every writing asset: a merge must never run beside a writer (DuckLake
# 1.5.5 loses a small delete committed during a merge, warehouse/lake_maintenance.py)
@dg.op(pool=WAREHOUSE_POOL, tags={"kind": "duckdb"},
       description="DuckLake maintenance: small files merged (and files with many deleted rows rewritten), "
                   "snapshots older than the retention expired except those an export names, files no snapshot "
                   "needs deleted. On the DuckDB file backend: CHECKPOINT only.")
def lake_maintenance(context: dg.OpExecutionContext, config: LakeMaintenanceConfig, warehouse: WarehouseResource,
                     exports: ExportsResource) -> dg.Output[dict]:
    days = config.retention_days or paths.lake_snapshot_retention_days()
    keep = exported_snapshots(Path(exports.path))
    with warehouse.connect() as con:
        result = maintain(con, now=datetime.now(timezone.utc), snapshot_retention=timedelta(days=days),
                          keep_snapshots=keep)
    summary = {"retention_days": days, **result.summary()}
    context.log.info(f"lake maintenance: {summary}")
    metadata: dict[str, object] = {k: v for k, v in summary.items() if not isinstance(v, list)}
    metadata["snapshots_kept_for_exports"] = dg.MetadataValue.json(result.snapshots_kept_for_exports)
    if result.before is not None and result.after is not None:
        metadata["files_by_table"] = dg.MetadataValue.json(
            {t: {"before": n, "after": result.after.files_by_table.get(t, 0)}
             for t, n in result.before.files_by_table.items()})
    return dg.Output(summary, metadata=metadata)
