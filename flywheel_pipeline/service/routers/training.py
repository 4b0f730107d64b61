"""The control API (the Stage 3 training API), for admin keys only (``FLYWHEEL_ADMIN_KEYS``; an
organization's key is 403): ``POST /training/run``, ``GET /training/status/{run_id}``,
``GET /training/models``, ``POST /training/deploy/{version}``, ``POST /training/promote-winner``,
``POST /training/rollback/{version}``, ``GET /training/stats``. Each is one call of
flywheel_pipeline/control.py (the CLI makes the same calls); the actions that change something are
audited there (``control_audit``) before they answer. The handlers are plain functions: FastAPI runs
them in its thread pool, since they wait on DuckDB's lock and the Dagster instance.

Refusals: 404 ``not_found`` (an unknown version, model family or run), 409 ``conflict`` (a retrain
already running, with its ``run_id``; no significant winner; an experiment already running; ...),
422 ``invalid_request`` (a share outside (0, 50], ``force`` without a reason, ...), 503
``warehouse_busy`` with ``Retry-After`` (a Dagster run kept the warehouse locked).
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flywheel_pipeline import control
from flywheel_pipeline.core.control import ControlRefused
from flywheel_pipeline.service.dependencies import Admin, RawBody, State, parse_json
from flywheel_pipeline.service.errors import Rejected, route_of

router = APIRouter(prefix="/training", tags=["training"])

_REFUSALS = {"not_found": (404, "not_found"), "conflict": (409, "conflict"), "invalid": (422, "invalid_request"),
             "busy": (503, "warehouse_busy")}
RETRY_AFTER_BUSY_S = 30


def _refused(request: Request, state, exc: ControlRefused) -> JSONResponse:
    """The refusal in the service's shape (``error``, ``detail``; ``run_id`` when it names a run),
    counted like every other."""
    status, reason = _REFUSALS[exc.kind]
    state.metrics.rejected.labels(route_of(request), reason).inc()
    body: dict[str, Any] = {"error": reason, "detail": exc.detail}
    if exc.run_id:
        body["run_id"] = exc.run_id
    headers = {"Retry-After": str(RETRY_AFTER_BUSY_S)} if exc.kind == "busy" else None
    return JSONResponse(body, status_code=status, headers=headers)


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # any JSON value: control.deploy checks it (a number in (0, 50]) and audits a refusal
    traffic_pct: Any = Field(description="The challenger's share of its family's traffic, in percent, in (0, 50].")


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: str | None = Field(None, description="The family whose challenger to promote (default: the only "
                                                 "family running an experiment).")
    force: bool = Field(False, strict=True, description="Promote without a significant winner (needs a reason; "
                                                        "recorded).")
    reason: str | None = Field(None, max_length=2000, description="Why (required with force).")


B = TypeVar("B", bound=BaseModel)


def _body(raw: bytes, model: type[B], *, optional: bool = False) -> B:
    """The body as the service reads every body (within its size and time limits, strict JSON: see
    dependencies.raw_body, parse_json), checked by ``model``; 422 ``invalid_request`` with the reason."""
    if optional and not raw.strip():
        return model()
    try:
        return model.model_validate(parse_json(raw))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise Rejected(422, "invalid_request", problems) from None


@router.post("/run", status_code=202)
def run(request: Request, state: State, actor: Admin) -> Any:
    """Launch the ``retrain`` job as a Dagster run in the background; answers its ``run_id`` at once."""
    try:
        return control.retrain(actor).answer
    except ControlRefused as exc:
        return _refused(request, state, exc)


@router.get("/status/{run_id}")
def status(request: Request, state: State, actor: Admin, run_id: str) -> Any:
    try:
        return control.run_status(run_id)
    except ControlRefused as exc:
        return _refused(request, state, exc)


@router.get("/models")
def models(request: Request, state: State, actor: Admin, status: str | None = None,
           family: str | None = None) -> Any:
    try:
        return control.models(status, family)
    except ControlRefused as exc:
        return _refused(request, state, exc)


def _documented(model: type[BaseModel], *, required: bool) -> dict:
    """The body's schema for /docs (the route reads the raw body itself: strict JSON, limits)."""
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/deploy/{version:path}", openapi_extra=_documented(DeployBody, required=True))
def deploy(request: Request, state: State, actor: Admin, raw: RawBody, version: str,
           family: str | None = None) -> Any:
    body = _body(raw, DeployBody)
    try:
        return control.deploy(actor, version, body.traffic_pct, family).answer
    except ControlRefused as exc:
        return _refused(request, state, exc)


@router.post("/promote-winner", openapi_extra=_documented(PromoteBody, required=False))
def promote_winner(request: Request, state: State, actor: Admin, raw: RawBody) -> Any:
    body = _body(raw, PromoteBody, optional=True)
    try:
        return control.promote_winner(actor, body.family, force=body.force, reason=body.reason).answer
    except ControlRefused as exc:
        return _refused(request, state, exc)


@router.post("/rollback/{version:path}")
def rollback(request: Request, state: State, actor: Admin, version: str, family: str | None = None) -> Any:
    try:
        return control.rollback(actor, version, family).answer
    except ControlRefused as exc:
        return _refused(request, state, exc)


@router.get("/stats")
def stats(request: Request, state: State, actor: Admin) -> Any:
    try:
        return control.stats()
    except ControlRefused as exc:
        return _refused(request, state, exc)

