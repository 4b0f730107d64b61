"""A local server speaking Together AI's fine-tuning REST API (the subset the backend uses)."""

from __future__ import annotations

import itertools
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile


class FakeTogether:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.create_calls: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self._ids = itertools.count(1)
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def record_auth(request: Request, call_next):
            self.auth.append(request.headers.get("authorization", ""))
            return await call_next(request)

        @app.post("/v1/files/upload")
        async def upload(file: UploadFile = File(...), purpose: str = Form(...), file_name: str = Form(...)):
            if purpose != "fine-tune":
                raise HTTPException(400, {"message": "purpose must be fine-tune"})
            fid = f"file-{next(self._ids)}"
            self.files[fid] = await file.read()
            return {"id": fid, "object": "file", "filename": file_name, "purpose": purpose}

        @app.post("/v1/fine-tunes")
        async def create(request: Request):
            body = await request.json()
            self.create_calls.append(body)
            if body.get("training_file") not in self.files:
                raise HTTPException(400, {"message": "training_file not found"})
            if body.get("training_method", {}).get("method") not in ("sft", "dpo"):
                raise HTTPException(400, {"message": "bad training_method"})
            jid = f"ft-{next(self._ids)}"
            self.jobs[jid] = {"id": jid, "status": "pending", "model": body["model"], "suffix": body.get("suffix"),
                              "output_name": None, "polls": 0}
            return self.jobs[jid]

        @app.get("/v1/fine-tunes")
        async def list_jobs():
            return {"data": list(self.jobs.values())}

        @app.get("/v1/fine-tunes/{jid}")
        async def retrieve(jid: str):
            job = self._job(jid)
            if job["status"] in ("pending", "queued", "running"):
                job["polls"] += 1
                job["status"] = ["pending", "queued", "running"][min(job["polls"], 2)]
                if job["polls"] >= 3:
                    if job["model"].startswith("fail/"):
                        job.update(status="error", error="dataset validation failed: missing messages")
                    else:
                        job.update(status="completed", token_count=4321,
                                   output_name=f"acct/{job['model'].split('/')[-1]}-{job['suffix']}")
            return job

        @app.get("/v1/fine-tunes/{jid}/events")
        async def events(jid: str):
            self._job(jid)
            return {"data": [{"message": "Training started", "created_at": 1, "level": "info"},
                             {"message": "step 1", "created_at": 2, "step": 1, "train_loss": 0.9}]}

        @app.post("/v1/fine-tunes/{jid}/cancel")
        async def cancel(jid: str):
            job = self._job(jid)
            job["status"] = "cancelled"
            return job

        return app

    def _job(self, jid: str) -> dict[str, Any]:
        if jid not in self.jobs:
            raise HTTPException(404, {"message": f"no job {jid}"})
        return self.jobs[jid]
