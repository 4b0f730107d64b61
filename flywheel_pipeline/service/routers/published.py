"""What the service reads from published files: ``GET /route`` (the lead's model from
``routing.json``, by ``flywheel_pipeline.routing.choose_model``) and ``GET /leaderboard``
(``leaderboard.json``). Both files are written elsewhere by atomic rename (the routing_table and
model_leaderboard assets) and re-read when they change; a key sees its own organization only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from flywheel_pipeline.routing import choose_model, choose_template
from flywheel_pipeline.service.dependencies import Caller, State, caller, check_org, switchable
from flywheel_pipeline.service.errors import Rejected

router = APIRouter()


@dataclass(frozen=True)
class RouteQuery:
    lead_id: str
    organization_id: str
    task_type: str


async def route_query(request: Request, state: State, lead_id: str = Query(min_length=1),
                      organization_id: str = Query(min_length=1), task_type: str = "all") -> RouteQuery:
    """The query, for the caller's own organization. Its key is checked here, after FastAPI has
    validated the query (not as a sibling ``Caller`` dependency, which would run first): a
    malformed query is a 422 whoever asks, and not a failed authentication."""
    org = await caller(request, state)
    check_org(state, org, organization_id, "query")
    return RouteQuery(lead_id, organization_id, task_type)


@router.get("/route")
@switchable("route")
async def route(state: State, query: Annotated[RouteQuery, Depends(route_query)]) -> dict:
    try:
        table = state.routing_table()
        answer = choose_model(query.lead_id, query.organization_id, query.task_type, table=table)
        return {**answer, **choose_template(query.lead_id, query.organization_id, query.task_type, table=table)}
    except LookupError as exc:
        raise Rejected(404, "no_route", str(exc)) from exc


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
