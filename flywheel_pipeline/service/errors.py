"""Refusals: every 4xx/5xx the service gives is a JSON body ``{"error": <reason code>, "detail":
<words>}``, counted in ``/metrics`` (``flywheel_requests_rejected_total{route,reason}``).

Routes and dependencies raise :class:`Rejected`; :func:`install_error_handlers` turns it, FastAPI's
query validation errors (422 ``invalid_request``), Starlette's 404/405 and any unexpected
exception (500 ``internal_error``, logged with its traceback) into that shape. A 401 also counts
against the client's failed-authentication budget (see dependencies.auth_gate).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

log = logging.getLogger("flywheel.service")

_HTTP_REASONS = {404: "not_found", 405: "method_not_allowed"}


class Rejected(Exception):
    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None,
                 extra: dict[str, object] | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers
        self.extra = extra or {}  # more fields of the JSON body beside error and detail


def route_of(request: Request | Scope) -> str:
    """The route's path template (the metrics label), ``unmatched`` when no route matched."""
    route = (request.scope if isinstance(request, Request) else request).get("route")
    return getattr(route, "path", None) or "unmatched"


def client_of(request: Request) -> str:
    """The key of per-client budgets (failed authentications; requests without an API key)."""
    return f"client:{request.client.host if request.client else 'unknown'}"


async def rejected(request: Request, exc: Rejected) -> JSONResponse:
    state = request.app.state.service
    if exc.status == 401:  # a failed authentication counts against the client's budget
        state.auth_failures.acquire(client_of(request))
    state.metrics.rejected.labels(route_of(request), exc.reason).inc()
    return JSONResponse({"error": exc.reason, "detail": exc.detail, **exc.extra}, status_code=exc.status,
                        headers=exc.headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return await rejected(request, Rejected(422, "invalid_request", problems))


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = _HTTP_REASONS.get(exc.status_code, f"http_{exc.status_code}")
    return await rejected(request, Rejected(exc.status_code, reason, str(exc.detail), dict(exc.headers or {})))


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    # a bug, never a bad payload (those are 4xx): one log line with the traceback, counted
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return await rejected(request, Rejected(500, "internal_error", "unexpected error (logged)"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Rejected, rejected)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
