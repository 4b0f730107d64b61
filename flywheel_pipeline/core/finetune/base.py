"""The fine-tuning backend protocol and its value types.

A backend turns a validated export (train and optional validation JSONL files) into a
model: ``submit`` starts a job and returns it at once; ``status``, ``events``, ``cancel`` and
``result`` talk about an existing job by id. Every submission carries an idempotency key in
the job's metadata (``flywheel_job_key``), so ``find`` can recover a job whose id was lost to
a crash between "the provider accepted it" and "we recorded it".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class JobStatus(str, enum.Enum):
    VALIDATING = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class FineTuneError(RuntimeError):
    """A job failed or was cancelled; ``job`` carries the provider's error."""

    def __init__(self, message: str, job: "FineTuneJob | None" = None):
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class TrainingFiles:
    train: Path
    validation: Path | None
    dataset_version: str


@dataclass(frozen=True)
class JobRequest:
    files: TrainingFiles
    method: str  # "supervised" or "dpo"
    base_model: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("supervised", "dpo"):
            raise ValueError(f"method must be 'supervised' or 'dpo', got {self.method!r}")


@dataclass
class FineTuneJob:
    backend: str
    job_id: str
    status: JobStatus
    base_model: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    created_at: int | None = None
    finished_at: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobEvent:
    created_at: int
    level: str
    message: str
    step: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class FineTuneBackend(Protocol):
    name: str

    def submit(self, request: JobRequest) -> FineTuneJob: ...

    def find(self, job_key: str) -> FineTuneJob | None: ...

    def status(self, job_id: str) -> FineTuneJob: ...

    def events(self, job_id: str) -> list[JobEvent]: ...

    def cancel(self, job_id: str) -> FineTuneJob: ...

    def result(self, job_id: str) -> str:
        """The fine-tuned model id; raises FineTuneError unless the job succeeded."""
        ...
