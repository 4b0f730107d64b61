"""Fine-tuning jobs that cost money are never started twice.

Each job is identified by a key over (backend, method, base model, hyperparameters, suffix,
seed, dataset version). Before anything is sent to a provider, a ``submitting`` row for the
key is committed; after the provider accepts the job its id is committed at once. On a retry
or re-execution:

* a row with a job id re-attaches to that job;
* a ``submitting`` row without an id (the process died between the provider's answer and
  our commit) first asks the backend for a job carrying the key in its metadata and
  re-attaches to it; only if there is none is the job submitted;
* no row: submit.

Waiting is resumable: :func:`wait_for_job` polls with backoff and records every status, so
a crash while waiting loses nothing; calling it again continues from the stored job id.
Connections are opened per step (``connect`` is a context-manager factory) so no DuckDB
lock is held while a job runs for an hour.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import ContextManager

import duckdb

from flywheel_pipeline.core.finetune.base import (FineTuneBackend, FineTuneError, FineTuneJob, JobRequest,
                                                  JobStatus)

Connect = Callable[[], ContextManager[duckdb.DuckDBPyConnection]]


def job_key(backend: str, request: JobRequest) -> str:
    payload = {"backend": backend, "method": request.method, "base_model": request.base_model,
               "hyperparameters": request.hyperparameters, "suffix": request.suffix, "seed": request.seed,
               "dataset_version": request.files.dataset_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _record(con: duckdb.DuckDBPyConnection, key: str, job: FineTuneJob) -> None:
    con.execute("""UPDATE finetune_jobs SET job_id = ?, status = ?, fine_tuned_model = ?, trained_tokens = ?,
                   error = ?, updated_at = now()::TIMESTAMP WHERE job_key = ?""",
                [job.job_id, job.status.value, job.fine_tuned_model, job.trained_tokens, job.error, key])


def submit_or_attach(connect: Connect, backend: FineTuneBackend, request: JobRequest) -> tuple[FineTuneJob, bool]:
    """Return (job, attached): the existing job for this request, or a newly submitted one."""
    key = job_key(backend.name, request)
    request = replace(request, metadata={**request.metadata, "flywheel_job_key": key})
    with connect() as con:
        row = con.execute("SELECT job_id FROM finetune_jobs WHERE job_key = ?", [key]).fetchone()
        if row is None:
            con.execute("INSERT INTO finetune_jobs VALUES (?, ?, NULL, 'submitting', ?, ?, ?, ?, NULL, NULL, NULL, "
                        "now()::TIMESTAMP, now()::TIMESTAMP)",
                        [key, backend.name, request.files.dataset_version, request.method, request.base_model,
                         json.dumps({"hyperparameters": request.hyperparameters, "suffix": request.suffix,
                                     "seed": request.seed})])
    if row is not None and row[0]:
        job = backend.status(row[0])
        attached = True
    else:
        found = backend.find(key) if row is not None else None
        job, attached = (found, True) if found is not None else (backend.submit(request), False)
    with connect() as con:
        _record(con, key, job)
    return job, attached


def wait_for_job(connect: Connect, backend: FineTuneBackend, job: FineTuneJob, *, poll_s: float = 30.0,
                 max_poll_s: float = 600.0, timeout_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 progress: Callable[[FineTuneJob], None] | None = None) -> FineTuneJob:
    """Poll until the job is terminal (exponential backoff, capped), recording each status.
    Raises FineTuneError with the provider's error for failed or cancelled jobs."""
    started = time.monotonic()
    delay = poll_s
    key = job.metadata.get("flywheel_job_key")
    while not job.status.terminal:
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise FineTuneError(f"job {job.job_id} still {job.status.value} after {timeout_s:.0f}s; "
                                "materialize again to keep waiting (the job is not resubmitted)", job)
        sleep(delay)
        delay = min(delay * 2, max_poll_s)
        job = backend.status(job.job_id)
        _store_status(connect, key, job)
        if progress:
            progress(job)
    _store_status(connect, key, job)
    if job.status is not JobStatus.SUCCEEDED:
        raise FineTuneError(f"fine-tuning job {job.job_id} {job.status.value}"
                            + (f": {job.error}" if job.error else ""), job)
    return job


def _store_status(connect: Connect, key: str | None, job: FineTuneJob) -> None:
    with connect() as con:
        if key:
            _record(con, key, job)
        else:
            con.execute("""UPDATE finetune_jobs SET status = ?, fine_tuned_model = ?, trained_tokens = ?, error = ?,
                           updated_at = now()::TIMESTAMP WHERE job_id = ?""",
                        [job.status.value, job.fine_tuned_model, job.trained_tokens, job.error, job.job_id])


def duckdb_connect(path: str) -> Connect:
    """A connect factory for a DuckDB file (short-lived connections)."""
    from flywheel_pipeline.warehouse.schema import connect as open_warehouse

    @contextlib.contextmanager
    def _connect():
        con = open_warehouse(path)
        try:
            yield con
        finally:
            con.close()

    return _connect
