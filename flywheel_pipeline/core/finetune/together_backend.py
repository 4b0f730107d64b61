"""Fine-tuning through Together AI's REST API over ``httpx``.

Files go to ``POST /v1/files/upload`` (``purpose=fine-tune``); jobs to ``POST /v1/fine-tunes``
with ``training_type`` (LoRA or full) and ``training_method`` (``sft`` or ``dpo`` with
``dpo_beta``); status, events and cancel under ``/v1/fine-tunes/{id}``. Together has no job
metadata, so the idempotency key travels in the suffix (``<suffix>-<key prefix>``) and
``find`` lists jobs to match it. The export formats are OpenAI-style, which Together accepts.
"""

from __future__ import annotations

from typing import Any

import httpx

from flywheel_pipeline.core.finetune.base import FineTuneError, FineTuneJob, JobEvent, JobRequest, JobStatus

DEFAULT_BASE_URL = "https://api.together.xyz/v1"
_STATUS = {"pending": JobStatus.QUEUED, "queued": JobStatus.QUEUED, "running": JobStatus.RUNNING,
           "compressing": JobStatus.RUNNING, "uploading": JobStatus.RUNNING,
           "cancel_requested": JobStatus.RUNNING, "cancelled": JobStatus.CANCELLED, "error": JobStatus.FAILED,
           "user_error": JobStatus.FAILED, "completed": JobStatus.SUCCEEDED}
KEY_CHARS = 12


class TogetherBackend:
    name = "together"

    def __init__(self, api_key: str, base_url: str | None = None, *, lora: bool = True, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.lora = lora
        self.http = httpx.Client(base_url=(base_url or DEFAULT_BASE_URL).rstrip("/") + "/",
                                 headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout_s,
                                 transport=transport)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json()
            except ValueError:
                detail = response.text
            raise FineTuneError(f"Together {method} /{path} -> HTTP {response.status_code}: {detail}")
        return response.json()

    def _upload(self, path) -> str:
        with open(path, "rb") as fh:
            body = self._call("POST", "files/upload", data={"purpose": "fine-tune", "file_name": path.name},
                              files={"file": (path.name, fh, "application/jsonl")})
        return body["id"]

    def _job(self, body: dict[str, Any]) -> FineTuneJob:
        status = _STATUS.get(body.get("status", ""), JobStatus.RUNNING)
        error = body.get("error") or (body.get("message") if status is JobStatus.FAILED else None)
        return FineTuneJob(backend=self.name, job_id=body["id"], status=status, base_model=body.get("model", ""),
                           fine_tuned_model=body.get("output_name") if status is JobStatus.SUCCEEDED else None,
                           trained_tokens=body.get("token_count") or body.get("total_tokens"),
                           error=str(error) if error else None,
                           metadata={"suffix": body.get("suffix") or ""})

    def submit(self, request: JobRequest) -> FineTuneJob:
        key = request.metadata.get("flywheel_job_key", "")
        suffix = "-".join(p for p in ((request.suffix or "flywheel")[:40], key[:KEY_CHARS]) if p)
        hyper = dict(request.hyperparameters)
        payload: dict[str, Any] = {
            "model": request.base_model, "training_file": self._upload(request.files.train), "suffix": suffix,
            "training_type": {"type": "Lora", "lora_r": int(hyper.pop("lora_r", 16)),
                              "lora_alpha": int(hyper.pop("lora_alpha", 32))} if self.lora else {"type": "Full"},
            "training_method": {"method": "sft"} if request.method == "supervised"
            else {"method": "dpo", "dpo_beta": float(hyper.pop("beta", 0.1))},
        }
        if request.files.validation is not None:
            payload["validation_file"] = self._upload(request.files.validation)
            payload["n_evals"] = int(hyper.pop("n_evals", 1))
        if request.seed is not None:
            payload["random_seed"] = request.seed
        payload.update(hyper)  # n_epochs, learning_rate, batch_size, warmup_ratio, ...
        job = self._job(self._call("POST", "fine-tunes", json=payload))
        job.metadata["flywheel_job_key"] = key
        return job

    def find(self, job_key: str) -> FineTuneJob | None:
        marker = job_key[:KEY_CHARS]
        for body in self._call("GET", "fine-tunes").get("data", []):
            if str(body.get("suffix") or "").endswith(marker) or marker in str(body.get("output_name") or ""):
                job = self._job(body)
                job.metadata["flywheel_job_key"] = job_key
                return job
        return None

    def status(self, job_id: str) -> FineTuneJob:
        return self._job(self._call("GET", f"fine-tunes/{job_id}"))

    def events(self, job_id: str) -> list[JobEvent]:
        out = []
        for e in self._call("GET", f"fine-tunes/{job_id}/events").get("data", []):
            created = e.get("created_at")
            out.append(JobEvent(int(created) if isinstance(created, (int, float)) else 0, e.get("level") or "info",
                                e.get("message", ""), e.get("step"), e.get("train_loss") or e.get("loss"),
                                e.get("eval_loss")))
        return out

    def cancel(self, job_id: str) -> FineTuneJob:
        return self._job(self._call("POST", f"fine-tunes/{job_id}/cancel"))

    def result(self, job_id: str) -> str:
        job = self.status(job_id)
        if job.status is JobStatus.SUCCEEDED and job.fine_tuned_model:
            return job.fine_tuned_model
        raise FineTuneError(f"job {job_id} is {job.status.value}" + (f": {job.error}" if job.error else ""), job)
