"""Every failed run recorded where users look."""

import json
import os
import time

import dagster as dg

from flywheel_pipeline import paths


@dg.run_failure_sensor(name="run_failure_sensor", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Records every failed run where users look: the log, a JSON line under "
                                   "$FLYWHEEL_HOME/alerts/failures.jsonl and an optional webhook.")
def run_failure_sensor(context: dg.RunFailureSensorContext):
    record = {"run_id": context.dagster_run.run_id, "job": context.dagster_run.job_name,
              "error": context.failure_event.message, "at": time.time()}
    context.log.error(f"run {record['run_id']} of {record['job']} failed: {record['error']}")
    alerts = paths.alerts_path()
    alerts.parent.mkdir(parents=True, exist_ok=True)
    with open(alerts, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    url = os.environ.get("FLYWHEEL_ALERT_WEBHOOK_URL")
    if url:
        import httpx

        try:
            httpx.post(url, json=record, timeout=10)
        except httpx.HTTPError as exc:
            context.log.warning(f"alert webhook {url} failed: {exc}")
