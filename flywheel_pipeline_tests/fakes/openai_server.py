"""A local HTTP server that speaks the OpenAI files and fine-tuning jobs API (the subset the
backend uses), for tests: real HTTP on 127.0.0.1, request shapes checked, state machine
queued -> running -> succeeded (or failed, for models named ``fail-*``), create calls counted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile

from flywheel_pipeline_tests.fakes.http import serve_app


class FakeOpenAI:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.create_calls: list[dict[str, Any]] = []
        self.cancel_calls = 0
        # chat completions: the answer for a model is the first entry whose prefix matches it
        self.answers: dict[str, str] = {"": "Hi {{first_name}}, worth a short call next week?"}
        self.chat_calls: list[dict[str, Any]] = []
        # a judge model: requests in JSON mode get {"score", "reason"} from this scorer of the
        # "Actual Output" that deepeval's G-Eval prompt shows (None: answer like any other model)
        self.judge_scorer: Callable[[str], int] | None = None
        # any model: the answer computed from the request body (None: the answers above), and
        # how many chat requests still to fail with a 500 before answering
        self.chat_responder: Callable[[dict[str, Any]], str] | None = None
        self.chat_failures = 0
        # optional, per model (the longest matching prefix): seconds to wait before answering, and
        # an HTTP status to fail with instead of answering
        self.chat_delays: dict[str, float] = {}
        self.chat_errors: dict[str, int] = {}
        self.chat_failure_status = 500  # the status of those failures (401: a refused key)
        # optional: seconds to wait (without blocking the server) before answering a chat request,
        # computed from its body (None: answer at once); the token usage chat answers report
        self.chat_delay: Callable[[dict[str, Any]], float] | None = None
        self.chat_usage = {"prompt_tokens": 10, "completion_tokens": 10}
        self._ids = itertools.count(1)
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/files")
        async def upload(file: UploadFile = File(...), purpose: str = Form(...)):
            if purpose != "fine-tune":
                raise HTTPException(400, {"error": {"message": f"bad purpose {purpose}"}})
            fid = f"file-{next(self._ids)}"
            self.files[fid] = await file.read()
            return {"id": fid, "object": "file", "bytes": len(self.files[fid]), "created_at": int(time.time()),
                    "filename": file.filename, "purpose": purpose, "status": "processed"}

        @app.post("/v1/fine_tuning/jobs")
        async def create(request: Request):
            body = await request.json()
            self.create_calls.append(body)
            if body.get("training_file") not in self.files:
                raise HTTPException(400, {"error": {"message": "training_file not found", "code": "invalid_file"}})
            method = body.get("method") or {}
            if method.get("type") not in ("supervised", "dpo") or method["type"] not in method:
                raise HTTPException(400, {"error": {"message": "bad method", "code": "invalid_method"}})
            jid = f"ftjob-{next(self._ids)}"
            self.jobs[jid] = {
                "id": jid, "object": "fine_tuning.job", "model": body["model"], "created_at": int(time.time()),
                "finished_at": None, "fine_tuned_model": None, "organization_id": "org-test", "result_files": [],
                "status": "validating_files", "validation_file": body.get("validation_file"),
                "training_file": body["training_file"], "hyperparameters": {}, "trained_tokens": None,
                "error": None, "seed": body.get("seed", 42), "method": method, "metadata": body.get("metadata"),
                "user_provided_suffix": body.get("suffix")}
            self.polls[jid] = 0
            return self.jobs[jid]

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.chat_calls.append(body)
            if not body.get("messages") or not body.get("model"):
                raise HTTPException(400, {"error": {"message": "model and messages are required"}})
            delay = _by_prefix(self.chat_delays, body["model"])
            if delay:
                await asyncio.sleep(delay)
            status = _by_prefix(self.chat_errors, body["model"])
            if status:
                raise HTTPException(status, {"error": {"message": f"injected {status} for {body['model']}"}})
            if self.chat_delay is not None:
                await asyncio.sleep(self.chat_delay(body))
            if self.chat_failures > 0:
                self.chat_failures -= 1
                raise HTTPException(self.chat_failure_status, {"error": {"message": "injected failure"}})
            prefix = max((p for p in self.answers if body["model"].startswith(p)), key=len)
            content = self.chat_responder(body) if self.chat_responder else self.answers[prefix]
            if self.judge_scorer is not None and (body.get("response_format") or {}).get("type") == "json_object":
                shown = body["messages"][-1]["content"]
                match = re.search(r"Actual Output:\n(.*?)\n\s*\n\s*\n", shown, re.DOTALL)
                if match is None:
                    raise HTTPException(400, {"error": {"message": "no Actual Output in the judge prompt"}})
                content = "```json\n" + json.dumps({"reason": "scored by the fake judge",
                                                     "score": self.judge_scorer(match.group(1))}) + "\n```"
            return {"id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {**self.chat_usage, "total_tokens": sum(self.chat_usage.values())}}

        @app.get("/v1/fine_tuning/jobs")
        async def list_jobs(request: Request):
            wanted = {k[len("metadata["):-1]: v for k, v in request.query_params.items() if k.startswith("metadata[")}
            data = [j for j in self.jobs.values()
                    if all((j.get("metadata") or {}).get(k) == v for k, v in wanted.items())]
            return {"object": "list", "data": data, "has_more": False}

        @app.get("/v1/fine_tuning/jobs/{jid}")
        async def retrieve(jid: str):
            job = self._job(jid)
            if job["status"] not in ("succeeded", "failed", "cancelled"):
                self.polls[jid] += 1
                job["status"] = ["validating_files", "queued", "running", "running"][min(self.polls[jid], 3)]
                if self.polls[jid] >= 4:
                    if job["model"].startswith("fail-"):
                        job.update(status="failed", finished_at=int(time.time()),
                                   error={"code": "invalid_training_file", "message": "line 3: bad role",
                                          "param": "training_file"})
                    else:
                        job.update(status="succeeded", finished_at=int(time.time()), trained_tokens=12345,
                                   fine_tuned_model=f"ft:{job['model']}:org-test:{job['user_provided_suffix'] or ''}:"
                                                    f"{jid}")
            return job

        @app.get("/v1/fine_tuning/jobs/{jid}/events")
        async def events(jid: str):
            self._job(jid)
            data = [{"id": f"ev-{k}", "object": "fine_tuning.job.event", "created_at": 1_700_000_000 + k,
                     "level": "info", "message": f"Step {k}/3: training loss={1.0 / k:.2f}", "type": "metrics",
                     "data": {"step": k, "train_loss": 1.0 / k, "valid_loss": 1.1 / k}} for k in (1, 2, 3)]
            return {"object": "list", "data": data, "has_more": False}

        @app.get("/v1/fine_tuning/jobs/{jid}/checkpoints")
        async def checkpoints(jid: str):
            job = self._job(jid)
            data = [{"id": f"ftckpt-{k}", "object": "fine_tuning.job.checkpoint", "created_at": 1_700_000_000 + k,
                     "fine_tuning_job_id": jid, "step_number": k * 10,
                     "fine_tuned_model_checkpoint": f"ft:{job['model']}:org-test::{jid}:ckpt-step-{k * 10}",
                     "metrics": {"step": k * 10, "train_loss": 1.0 / k, "valid_loss": 1.2 / k,
                                 "full_valid_loss": 1.25 / k}} for k in (1, 2)]
            return {"object": "list", "data": data, "has_more": False}

        @app.post("/v1/fine_tuning/jobs/{jid}/cancel")
        async def cancel(jid: str):
            self.cancel_calls += 1
            job = self._job(jid)
            if job["status"] in ("succeeded", "failed"):
                raise HTTPException(400, {"error": {"message": "job already finished"}})
            job.update(status="cancelled", finished_at=int(time.time()))
            return job

        return app

    def _job(self, jid: str) -> dict[str, Any]:
        if jid not in self.jobs:
            raise HTTPException(404, {"error": {"message": f"no job {jid}", "code": "not_found"}})
        return self.jobs[jid]


def _by_prefix(table: dict[str, Any], model: str) -> Any:
    """The value of the longest prefix of ``model`` in ``table`` (None when none matches)."""
    matches = [p for p in table if model.startswith(p)]
    return table[max(matches, key=len)] if matches else None


@contextlib.contextmanager
def serve(fake: FakeOpenAI):
    """Run the fake on a free 127.0.0.1 port in a thread; yields the base URL (…/v1)."""
    with serve_app(fake.app) as base:
        yield f"{base}/v1"
