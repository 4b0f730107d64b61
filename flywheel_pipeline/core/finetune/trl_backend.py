"""Local LoRA fine-tuning with transformers + peft + TRL (optional extra ``[local]``), on the
user's GPU or on the CPU.

``submit`` trains synchronously: SFT (``SFTTrainer``) on the chat export or DPO
(``DPOTrainer``) on the preference export (converted to TRL's prompt/chosen/rejected),
saves the LoRA adapter and tokenizer under ``<output_root>/<job_id>/adapter`` and returns the
finished job. ``<job_id>/status.json`` and ``events.json`` (the trainer's log history) make
``status``, ``events`` and ``find`` work from any process. A job that died mid-training
(its process is gone) is reported failed and ``find`` ignores it, so a retry trains again:
local training costs no money. The base model is a Hugging Face id or a local directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from flywheel_pipeline.core.processes import pid_exists
from flywheel_pipeline.core.finetune.base import FineTuneError, FineTuneJob, JobEvent, JobRequest, JobStatus

_HYPER = {"n_epochs": "num_train_epochs", "learning_rate": "learning_rate", "batch_size": "per_device_train_batch_size",
          "max_steps": "max_steps", "max_length": "max_length", "gradient_accumulation_steps":
          "gradient_accumulation_steps", "warmup_ratio": "warmup_ratio"}


def _alive(pid: int, host: str) -> bool:
    if host != socket.gethostname():
        return True  # another machine's job: trust its status file
    return pid_exists(pid)


def _preference_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            ex = json.loads(line)
            rows.append({"prompt": ex["input"]["messages"], "chosen": ex["preferred_output"],
                         "rejected": ex["non_preferred_output"]})
    return rows


class TrlBackend:
    name = "trl"

    def __init__(self, output_root: str | Path, *, lora_r: int = 16, lora_alpha: int = 32,
                 target_modules: list[str] | None = None, use_cpu: bool | None = None):
        self.root = Path(output_root)
        self.lora_r, self.lora_alpha, self.target_modules = lora_r, lora_alpha, target_modules
        self.use_cpu = use_cpu

    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _write(self, job_id: str, **status: Any) -> None:
        directory = self._dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ".status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2))
        os.replace(tmp, directory / "status.json")

    def _read(self, job_id: str) -> dict[str, Any]:
        path = self._dir(job_id) / "status.json"
        if not path.exists():
            raise FineTuneError(f"trl: no local job {job_id} under {self.root}")
        return json.loads(path.read_text())

    def _job(self, job_id: str, s: dict[str, Any]) -> FineTuneJob:
        status = JobStatus(s["status"])
        if status is JobStatus.RUNNING and not _alive(s.get("pid", 0), s.get("host", "")):
            status, s["error"] = JobStatus.FAILED, "interrupted: the training process is gone"
        return FineTuneJob(backend=self.name, job_id=job_id, status=status, base_model=s["base_model"],
                           fine_tuned_model=s.get("fine_tuned_model"), trained_tokens=s.get("trained_tokens"),
                           error=s.get("error"), created_at=s.get("created_at"), finished_at=s.get("finished_at"),
                           metadata=s.get("metadata", {}))

    def submit(self, request: JobRequest) -> FineTuneJob:
        key = request.metadata.get("flywheel_job_key") or hashlib.sha256(
            request.files.train.read_bytes()).hexdigest()
        job_id = f"trl-{request.method}-{key[:16]}"
        base = {"base_model": request.base_model, "metadata": dict(request.metadata), "created_at": int(time.time()),
                "pid": os.getpid(), "host": socket.gethostname()}
        self._write(job_id, status=JobStatus.RUNNING.value, **base)
        try:
            result = self._train(request, self._dir(job_id))
        except Exception as exc:  # noqa: BLE001 - any training error becomes the job's error
            self._write(job_id, status=JobStatus.FAILED.value, error=f"{type(exc).__name__}: {exc}",
                        finished_at=int(time.time()), **base)
            return self.status(job_id)
        self._write(job_id, status=JobStatus.SUCCEEDED.value, finished_at=int(time.time()),
                    fine_tuned_model=f"local:{result['adapter']}", trained_tokens=result["tokens"], **base)
        return self.status(job_id)

    def _train(self, request: JobRequest, directory: Path) -> dict[str, Any]:
        from datasets import Dataset, load_dataset
        from peft import LoraConfig
        from transformers import AutoTokenizer
        from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

        tokenizer = AutoTokenizer.from_pretrained(request.base_model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        hyper = dict(request.hyperparameters)
        args: dict[str, Any] = {_HYPER[k]: v for k, v in hyper.items() if k in _HYPER}
        for integer in ("per_device_train_batch_size", "max_steps", "max_length", "gradient_accumulation_steps"):
            if integer in args:
                args[integer] = int(args[integer])
        common = {"output_dir": str(directory / "checkpoints"), "report_to": [], "logging_steps": 1,
                  "save_strategy": "no", "seed": request.seed if request.seed is not None else 42, **args}
        if self.use_cpu is not None:
            common["use_cpu"] = self.use_cpu
        lora = LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, task_type="CAUSAL_LM",
                          target_modules=self.target_modules or "all-linear")
        if request.method == "supervised":
            train = load_dataset("json", data_files=str(request.files.train), split="train")
            trainer = SFTTrainer(model=request.base_model, args=SFTConfig(**common), train_dataset=train,
                                 processing_class=tokenizer, peft_config=lora)
        else:
            train = Dataset.from_list(_preference_rows(request.files.train))
            trainer = DPOTrainer(model=request.base_model, args=DPOConfig(beta=float(hyper.get("beta", 0.1)), **common),
                                 train_dataset=train, processing_class=tokenizer, peft_config=lora)
        trainer.train()
        adapter = directory / "adapter"
        trainer.save_model(str(adapter))
        tokenizer.save_pretrained(str(adapter))
        history = trainer.state.log_history
        (directory / "events.json").write_text(json.dumps(history, indent=2, default=str))
        tokens = int(max((h.get("num_tokens", 0) for h in history), default=0))
        return {"adapter": str(adapter), "tokens": tokens}

    def find(self, job_key: str) -> FineTuneJob | None:
        for status_file in self.root.glob("trl-*/status.json"):
            s = json.loads(status_file.read_text())
            if s.get("metadata", {}).get("flywheel_job_key") == job_key:
                job = self._job(status_file.parent.name, s)
                if job.status in (JobStatus.SUCCEEDED, JobStatus.RUNNING):
                    return job
        return None  # nothing finished or alive: train (again); local training costs nothing

    def status(self, job_id: str) -> FineTuneJob:
        return self._job(job_id, self._read(job_id))

    def events(self, job_id: str) -> list[JobEvent]:
        path = self._dir(job_id) / "events.json"
        if not path.exists():
            return []
        out = []
        for h in json.loads(path.read_text()):
            if "loss" in h:
                out.append(JobEvent(0, "info", f"step {h.get('step')}: loss {h['loss']}", h.get("step"),
                                    float(h["loss"]), h.get("eval_loss")))
        return out

    def cancel(self, job_id: str) -> FineTuneJob:
        return self.status(job_id)  # training runs inside submit; a finished job cannot be cancelled

    def result(self, job_id: str) -> str:
        job = self.status(job_id)
        if job.status is JobStatus.SUCCEEDED and job.fine_tuned_model:
            return job.fine_tuned_model
        raise FineTuneError(f"job {job_id} is {job.status.value}" + (f": {job.error}" if job.error else ""), job)
