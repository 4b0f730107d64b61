"""SANDBOX fine-tuning backend: no network, no training. For the demo and tests only.

It "trains" instantly and is stateless and deterministic: the job id and the model id are
derived from the base model, the method and the sha256 of the training file, so submitting
the same dataset twice yields the same job (idempotent by construction) and any process can
answer ``status`` for any sandbox job. Model ids start with ``sandbox:``; every job, event and
result says it is a sandbox.
"""

from __future__ import annotations

import hashlib

from flywheel_pipeline.core.finetune.base import FineTuneError, FineTuneJob, JobEvent, JobRequest, JobStatus

SANDBOX_NOTICE = "SANDBOX backend: no model was trained; the id only names base model and dataset"
_PREFIX = "sandbox-ftjob"


class SandboxBackend:
    name = "sandbox"

    def submit(self, request: JobRequest) -> FineTuneJob:
        digest = hashlib.sha256(request.files.train.read_bytes()).hexdigest()[:16]
        job_id = f"{_PREFIX}~{request.method}~{request.base_model}~{digest}"
        return self.status(job_id)

    def find(self, job_key: str) -> FineTuneJob | None:
        return None  # resubmitting is free and yields the same job id

    def _parse(self, job_id: str) -> tuple[str, str, str]:
        parts = job_id.split("~")
        if len(parts) != 4 or parts[0] != _PREFIX:
            raise FineTuneError(f"sandbox: {job_id!r} is not a sandbox job id")
        return parts[1], parts[2], parts[3]

    def status(self, job_id: str) -> FineTuneJob:
        method, base, digest = self._parse(job_id)
        return FineTuneJob(backend=self.name, job_id=job_id, status=JobStatus.SUCCEEDED, base_model=base,
                           fine_tuned_model=f"sandbox:{base}:{method}:{digest}", trained_tokens=0,
                           metadata={"sandbox": "true", "notice": SANDBOX_NOTICE, "method": method})

    def events(self, job_id: str) -> list[JobEvent]:
        self._parse(job_id)
        return [JobEvent(0, "info", SANDBOX_NOTICE)]

    def cancel(self, job_id: str) -> FineTuneJob:
        return self.status(job_id)  # sandbox jobs finish at once; nothing to cancel

    def result(self, job_id: str) -> str:
        model = self.status(job_id).fine_tuned_model
        assert model is not None
        return model
