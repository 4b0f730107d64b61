"""What the service reads from published files: ``GET /route`` (the lead's model from
``routing.json`` or a routing strategy over ``model_stats.json``, by
``flywheel_pipeline.routing.choose_model``), ``GET /models`` (the catalog with measured quality
and cost) and ``GET /leaderboard`` (``leaderboard.json``). The files are written elsewhere by
atomic rename (the routing_table, model_choice_stats and model_leaderboard assets) and re-read
when they change; a key sees its own organization only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from flywheel_pipeline.core.catalog import Catalog, CatalogError
from flywheel_pipeline.core.model_choice import ALL_TASKS, ChoiceError, Constraints
from flywheel_pipeline.core.model_snapshot import catalog_rows
from flywheel_pipeline.routing import route_answer
from flywheel_pipeline.service.dependencies import Caller, State, caller, check_org, switchable
from flywheel_pipeline.service.errors import Rejected
from flywheel_pipeline.service.state import ServiceState

router = APIRouter()


@dataclass(frozen=True)
class RouteQuery:
    lead_id: str
    organization_id: str
    task_type: str
    strategy: str | None
    candidates: tuple[str, ...] | None
    constraints: Constraints


def split_list(value: str | None) -> tuple[str, ...] | None:
    """``a,b`` -> ("a", "b"); None when not given (an empty value is an empty list)."""
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


class RouteParams(BaseModel):
    """GET /route's query."""

    lead_id: str = Field(min_length=1)
    organization_id: str | None = Field(None, min_length=1)
    task_type: str = ALL_TASKS
    strategy: str | None = None
    candidates: str | None = Field(None, description="comma-separated model ids")
    min_quality: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    max_cost_per_message: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    capabilities: str | None = Field(None, description="comma-separated capabilities every candidate must have")
    min_context_window: int | None = Field(None, gt=0)


def query_parameters(model: type[BaseModel]) -> list[dict]:
    """The OpenAPI ``parameters`` of a query validated by ``model`` inside the handler."""
    schema = model.model_json_schema()
    return [{"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": field}
            for name, field in schema["properties"].items()]


async def route_query(request: Request, state: State) -> RouteQuery:
    """The query, for the caller's own organization (``organization_id`` defaults to the key's).
    Validated here in one step (FastAPI's per-parameter validation of these ten parameters cost
    more than the rest of the request), then the key is checked: a malformed query is a 422
    whoever asks, and not a failed authentication."""
    try:
        params = RouteParams.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from exc
    org = await caller(request, state)
    organization_id = params.organization_id
    if organization_id is None:
        if org is None:
            raise Rejected(422, "invalid_request", "query.organization_id: required when no API keys are configured")
        organization_id = org
    check_org(state, org, organization_id, "query")
    constraints = Constraints(params.min_quality, params.max_cost_per_message, params.max_latency_ms,
                              split_list(params.capabilities) or (), params.min_context_window)
    return RouteQuery(params.lead_id, organization_id, params.task_type, params.strategy or state.settings.route_strategy,
                      split_list(params.candidates), constraints)


def choice_rejected(exc: ChoiceError) -> Rejected:
    """A routing choice's bad input: 422 with the reason code, words and the closest model."""
    return Rejected(422, exc.code, exc.detail, extra={"closest": exc.closest} if exc.closest else None)


def catalog_of(state: ServiceState, snapshot: dict) -> Any:
    try:
        return state.catalog(snapshot)
    except CatalogError as exc:
        raise Rejected(503, "catalog_invalid", str(exc)) from exc


@router.get("/route", openapi_extra={"parameters": query_parameters(RouteParams)})
@switchable("route")
async def route(state: State, query: Annotated[RouteQuery, Depends(route_query)]) -> dict:
    snapshot = state.model_stats()
    settings = state.settings
    try:
        catalog = state.catalog(snapshot)
    except CatalogError as exc:
        if query.strategy is not None:
            raise Rejected(503, "catalog_invalid", str(exc)) from exc
        catalog = Catalog({})  # the routing table decides as before; no fallback chain
    try:
        return route_answer(query.lead_id, query.organization_id, query.task_type, table=state.routing_table(),
                            strategy=query.strategy, candidates=query.candidates, constraints=query.constraints,
                            snapshot=snapshot, catalog=catalog, fallbacks=settings.route_fallbacks,
                            tolerance=settings.route_tolerance)
    except ChoiceError as exc:
        raise choice_rejected(exc) from exc
    except LookupError as exc:
        raise Rejected(404, "no_route", str(exc)) from exc


@router.get("/models")
@switchable("models")
async def models(state: State, org: Caller, task_type: str | None = None) -> dict:
    """The model catalog with measured quality and cost where known (the key's organization's own
    measurements when it has them, else every organization's)."""
    snapshot = state.model_stats()
    rows = catalog_rows(catalog_of(state, snapshot), snapshot, org, task_type)
    return {"organization_id": org, "task_type": task_type or ALL_TASKS, "generated_at": snapshot.get("generated_at"),
            "quality_metric": snapshot.get("quality_metric"), "models": rows}


@router.get("/leaderboard")
@switchable("leaderboard")
async def get_leaderboard(state: State, org: Caller) -> Any:
    board = state.leaderboard.get()
    if board is None:
        raise Rejected(404, "not_published", "no leaderboard yet (materialize model_leaderboard)")
    return board if org is None else organization_board(board, org)


def organization_board(board: dict[str, Any], org: str) -> dict[str, Any]:
    """A key sees its organization's board only: models rated on its own messages (without API
    keys, on loopback development, the whole file is served)."""
    return {**{k: v for k, v in board.items() if k not in ("models", "organizations")},
            "organization_id": org, "models": (board.get("organizations") or {}).get(org, [])}
