"""Logging a learn table to MLflow: one run per materialization, its link in the metadata; the
table stands without MLflow (a failure to log is a warning, not a failed run)."""

from typing import Any

import dagster as dg

from flywheel_pipeline.defs.resources import MlflowResource
from flywheel_pipeline.tracking import log_table, run_url


def log_learn_table(context: dg.AssetExecutionContext, mlflow: MlflowResource, name: str, rows: list[dict],
                    markdown: str, metrics: dict[str, float] | None = None, figures: dict[str, Any] | None = None,
                    tables: dict[str, list[dict]] | None = None) -> dict[str, object]:
    """Log the table (rows as ``<name>.json``, ``markdown`` as ``<name>.md``, figures as PNG) and
    return the metadata entries that link to the run."""
    try:
        run = log_table(mlflow.tracking_uri, name, rows, markdown, metrics, figures=figures, tables=tables)
    except Exception as exc:  # noqa: BLE001 - the table stands without MLflow; say so
        context.log.warning(f"{name} not logged to MLflow: {exc}")
        return {}
    return {"mlflow_run": dg.MetadataValue.url(run_url(mlflow.tracking_uri, run.experiment_id, run.run_id,
                                                       mlflow.ui_url)),
            "mlflow_run_id": run.run_id}
