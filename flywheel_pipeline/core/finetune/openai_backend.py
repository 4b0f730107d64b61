"""Fine-tuning through the ``openai`` SDK against OpenAI or any OpenAI-compatible host.

Uploads the files (``purpose="fine-tune"``), creates the job with ``method`` (supervised or
DPO with ``beta``), ``suffix``, ``seed``, ``metadata`` (including the idempotency key) and the
validation file, and maps the provider's job to :class:`FineTuneJob`. ``find`` lists jobs by
metadata, so a job created just before a crash is re-attached instead of paid for twice.

OpenAI stops accepting new self-serve fine-tuning jobs after 2027-01-06 and retires its
gpt-4o/4.1 snapshots on 2027-01-14: :func:`openai_deadline_warning` says so whenever the
target is api.openai.com.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from flywheel_pipeline.core.finetune.base import FineTuneError, FineTuneJob, JobEvent, JobRequest, JobStatus

log = logging.getLogger(__name__)

OPENAI_LAST_JOB_DAY = date(2027, 1, 6)
OPENAI_SNAPSHOT_RETIREMENT = date(2027, 1, 14)
_STATUS = {s.value: s for s in JobStatus} | {"validating_files": JobStatus.VALIDATING, "pausing": JobStatus.RUNNING,
                                             "paused": JobStatus.RUNNING}


def openai_deadline_warning(base_url: str | None, today: date | None = None) -> str | None:
    if base_url and "api.openai.com" not in base_url:
        return None
    today = today or date.today()
    if today > OPENAI_LAST_JOB_DAY:
        return (f"OpenAI stopped accepting new self-serve fine-tuning jobs after {OPENAI_LAST_JOB_DAY}; "
                "use another backend (OpenAI-compatible host, Together, local TRL)")
    return (f"OpenAI stops accepting new self-serve fine-tuning jobs after {OPENAI_LAST_JOB_DAY} "
            f"({(OPENAI_LAST_JOB_DAY - today).days} days left) and retires gpt-4o/4.1 snapshots on "
            f"{OPENAI_SNAPSHOT_RETIREMENT}; plan a move to another backend")


def _to_job(backend: str, job: Any) -> FineTuneJob:
    error = getattr(job, "error", None)
    message = None
    if error is not None and (getattr(error, "message", None) or getattr(error, "code", None)):
        message = f"{getattr(error, 'code', '') or 'error'}: {getattr(error, 'message', '')}".strip()
    return FineTuneJob(
        backend=backend, job_id=job.id, status=_STATUS.get(job.status, JobStatus.RUNNING), base_model=job.model,
        fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens, error=message,
        created_at=job.created_at, finished_at=job.finished_at, metadata=dict(job.metadata or {}))


class OpenAIBackend:
    name = "openai"

    def __init__(self, api_key: str, base_url: str | None = None, *, max_retries: int = 3, timeout_s: float = 60.0):
        import openai

        self.base_url = base_url
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s)

    def submit(self, request: JobRequest) -> FineTuneJob:
        warning = openai_deadline_warning(self.base_url)
        if warning:
            log.warning(warning)
        with open(request.files.train, "rb") as fh:
            train = self.client.files.create(file=fh, purpose="fine-tune")
        validation_id = None
        if request.files.validation is not None:
            with open(request.files.validation, "rb") as fh:
                validation_id = self.client.files.create(file=fh, purpose="fine-tune").id
        method: dict[str, Any] = {"type": request.method,
                                  request.method: {"hyperparameters": dict(request.hyperparameters)}}
        kwargs: dict[str, Any] = {"model": request.base_model, "training_file": train.id, "method": method,
                                  "metadata": {**request.metadata, "dataset_version": request.files.dataset_version}}
        if validation_id:
            kwargs["validation_file"] = validation_id
        if request.suffix:
            kwargs["suffix"] = request.suffix
        if request.seed is not None:
            kwargs["seed"] = request.seed
        return _to_job(self.name, self.client.fine_tuning.jobs.create(**kwargs))

    def find(self, job_key: str) -> FineTuneJob | None:
        page = self.client.fine_tuning.jobs.list(metadata={"flywheel_job_key": job_key}, limit=10)
        for job in page.data:
            if (job.metadata or {}).get("flywheel_job_key") == job_key:
                return _to_job(self.name, job)
        return None

    def status(self, job_id: str) -> FineTuneJob:
        return _to_job(self.name, self.client.fine_tuning.jobs.retrieve(job_id))

    def events(self, job_id: str) -> list[JobEvent]:
        out = []
        for event in self.client.fine_tuning.jobs.list_events(job_id, limit=100).data:
            data = getattr(event, "data", None) or {}
            out.append(JobEvent(event.created_at, event.level, event.message, data.get("step"),
                                data.get("train_loss"), data.get("valid_loss")))
        return sorted(out, key=lambda e: (e.created_at, e.step or 0))

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """Saved checkpoints with their metrics (step, train/valid loss, checkpoint model id)."""
        out = []
        for cp in self.client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data:
            metrics = cp.metrics.model_dump(exclude_none=True) if cp.metrics is not None else {}
            out.append({"step": cp.step_number, "model": cp.fine_tuned_model_checkpoint, **metrics})
        return sorted(out, key=lambda c: c["step"])

    def cancel(self, job_id: str) -> FineTuneJob:
        return _to_job(self.name, self.client.fine_tuning.jobs.cancel(job_id))

    def result(self, job_id: str) -> str:
        job = self.status(job_id)
        if job.status is JobStatus.SUCCEEDED and job.fine_tuned_model:
            return job.fine_tuned_model
        raise FineTuneError(f"job {job_id} is {job.status.value}" + (f": {job.error}" if job.error else ""), job)
