"""AI-GYM's metric endpoints under ``/api/v1`` (not Prometheus' ``/metrics``), thin over the
learning tables as the ``model_choice_stats`` asset publishes them in ``model_stats.json``
(recent messages with labels and judge scores, per-model outcome rates, cost_analysis): the
service never opens the warehouse. Every answer is the key's organization's own rows only.

``GET /api/v1/executions``, ``GET /api/v1/models/stats``, ``GET /api/v1/models/compare``,
``GET /api/v1/costs``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from flywheel_pipeline.core.model_choice import ALL_TASKS, ChoiceError
from flywheel_pipeline.core.model_snapshot import COMPARE_METRICS, compare, organization_models
from flywheel_pipeline.service.dependencies import State, caller, check_org, switchable
from flywheel_pipeline.service.errors import Rejected
from flywheel_pipeline.service.routers.published import choice_rejected, split_list

router = APIRouter(prefix="/api/v1")

MAX_EXECUTIONS = 1000


async def organization(request: Request, state: State,
                       organization_id: str | None = Query(None, min_length=1)) -> str:
    """The organization asked about: the key's (``organization_id`` may repeat it); without API
    keys (loopback development) ``organization_id`` is required."""
    org = await caller(request, state)
    if organization_id is None:
        if org is None:
            raise Rejected(422, "invalid_request", "query.organization_id: required when no API keys are configured")
        return org
    check_org(state, org, organization_id, "query")
    return organization_id


Organization = Annotated[str, Depends(organization)]


def _published(state) -> dict:
    snapshot = state.model_stats()
    if not snapshot.get("generated_at"):
        raise Rejected(404, "not_published", "no model stats yet (materialize model_choice_stats: flywheel learn)")
    return snapshot


@router.get("/executions")
@switchable("metrics_api")
async def executions(state: State, org: Organization, limit: int = Query(50, ge=1, le=MAX_EXECUTIONS),
                     model_id: str | None = None, task_type: str | None = None) -> dict:
    """The organization's latest messages (newest first) with their outcome so far, quality
    score, judge score, cost, latency and tokens, as of the last learn run."""
    snapshot = _published(state)
    rows = [r for r in (snapshot.get("executions") or {}).get(org, [])
            if (model_id is None or r.get("model_id") == model_id) and (task_type is None or r.get("task_type") == task_type)]
    return {"organization_id": org, "generated_at": snapshot["generated_at"], "executions": rows[:limit]}


@router.get("/models/stats")
@switchable("metrics_api")
async def model_stats(state: State, org: Organization, task_type: str = ALL_TASKS) -> dict:
    """Per model, the organization's messages, mature messages, reply / positive-reply / meeting
    rates, the quality metric with its interval, cost per message and per outcome, latency."""
    snapshot = _published(state)
    measured = organization_models(snapshot, org, task_type)
    return {"organization_id": org, "task_type": task_type, "generated_at": snapshot["generated_at"],
            "quality_metric": snapshot.get("quality_metric"),
            "models": [{"model_id": m, **{k: v for k, v in row.items() if k != "scope"}}
                       for m, row in sorted(measured.items())]}


@router.get("/models/compare")
@switchable("metrics_api")
async def model_compare(state: State, org: Organization, models: str = Query(min_length=1),
                        task_type: str = ALL_TASKS, metric: str = "reply_rate") -> dict:
    """Two or more models on the organization's messages: each rate with its 95% interval and
    each against the first with the difference, its interval and p-value."""
    snapshot = _published(state)
    if metric not in COMPARE_METRICS:
        raise Rejected(422, "unknown_metric", f"unknown metric {metric!r}; known: {', '.join(COMPARE_METRICS)}")
    try:
        result = compare(organization_models(snapshot, org, task_type), split_list(models) or (), metric)
    except ChoiceError as exc:
        raise choice_rejected(exc) from exc
    return {"organization_id": org, "task_type": task_type, "generated_at": snapshot["generated_at"], **result}


@router.get("/costs")
@switchable("metrics_api")
async def costs(state: State, org: Organization, task_type: str | None = None, model_id: str | None = None) -> dict:
    """The organization's rows of ``cost_analysis``: cost per message, reply, positive reply,
    meeting and deal with intervals, latency, and the savings on the cheapest not-worse model."""
    snapshot = _published(state)
    rows = [r for r in (snapshot.get("costs") or {}).get(org, [])
            if (task_type is None or r.get("task_type") == task_type) and (model_id is None or r.get("model_id") == model_id)]
    return {"organization_id": org, "generated_at": snapshot["generated_at"], "costs": rows,
            "cost_usd": sum(r["cost_usd"] or 0 for r in rows),
            "savings_usd": sum(r["savings_usd"] or 0 for r in rows if (r["savings_usd"] or 0) > 0)}
