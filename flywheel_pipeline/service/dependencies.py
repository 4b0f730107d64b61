"""FastAPI dependencies the routes share: the service state, API-key authentication to an
organization, the failed-authentication gate, per-organization rate limiting, the request
body (read within its size and time limits, parsed as strict JSON), and which routes
``FLYWHEEL_DISABLED_ROUTES`` switches off.

A dependency refuses by raising :class:`~flywheel_pipeline.service.errors.Rejected`. FastAPI
runs a route's dependencies in the order its parameters name them, so a route lists them in
the order it checks: the gate and credentials before the body is read, the body before it is
parsed. Every dependency is ``async`` (a plain ``def`` would cost a thread hop per request).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from flywheel_pipeline.core import strict_json
from flywheel_pipeline.core.control import Actor
from flywheel_pipeline.service.errors import Rejected, client_of
from flywheel_pipeline.service.settings import ROUTES, ServiceSettings, key_fingerprint
from flywheel_pipeline.service.state import ServiceState

log = logging.getLogger("flywheel.service")

MAX_RECORDS_PER_REQUEST = 1000


async def service_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]


# ---- authentication ------------------------------------------------------------------------

def auth_gate(request: Request, state: ServiceState) -> None:
    """A client over its failed-authentication budget is refused (429) before its credentials are
    checked, so keys and secrets cannot be guessed at speed (routes that authenticate call it)."""
    wait = state.auth_failures.blocked(client_of(request))
    if wait:
        raise Rejected(429, "rate_limited", f"more than {state.settings.auth_failures_per_minute} failed "
                       "authentications a minute from this client", {"Retry-After": str(wait)})


async def caller(request: Request, state: State) -> str | None:
    """The organization of the request's API key (``Authorization: Bearer <key>`` or
    ``X-API-Key``); None when no keys are configured (loopback development)."""
    if not state.api_keys:
        return None
    auth_gate(request, state)
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    found = None
    for org, key in state.api_keys:  # every key compared, in constant time each
        if hmac.compare_digest(given.encode(), key) and given:
            found = org
    if found is not None:
        return found
    raise Rejected(401, "unauthorized", "missing or unknown API key (Authorization: Bearer <key>)",
                   {"WWW-Authenticate": "Bearer"})


Caller = Annotated[str | None, Depends(caller)]


async def throttled_caller(request: Request, state: State, org: Caller) -> str | None:
    """The caller's organization, within its ``FLYWHEEL_RATE_LIMIT_PER_MINUTE`` (per client
    when no keys are configured)."""
    key = org or client_of(request)
    wait = state.limiter.acquire(key)
    if wait:
        raise Rejected(429, "rate_limited", f"more than {state.settings.rate_limit_per_minute} requests a minute "
                       f"for {key}", {"Retry-After": str(wait)})
    return org


ThrottledCaller = Annotated[str | None, Depends(throttled_caller)]


def _given_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")


async def admin(request: Request, state: State) -> Actor:
    """The admin key's actor for the control API (``FLYWHEEL_ADMIN_KEYS``): no key or an unknown one is
    401, an organization's key 403 (never an admin); every key is compared, in constant time each."""
    auth_gate(request, state)
    given = _given_key(request).encode()
    found = None
    for name, key in state.admin_keys:
        if hmac.compare_digest(given, key) and given:
            found = name
    organization = False
    for _org, key in state.api_keys:
        if hmac.compare_digest(given, key) and given:
            organization = True
    if found is not None:
        return Actor(f"admin:{found}", "http", key_fingerprint(given.decode()))
    if organization:
        raise Rejected(403, "forbidden", "an organization's API key cannot use the control API: it needs an admin "
                                         "key (FLYWHEEL_ADMIN_KEYS)")
    off = "" if state.admin_keys else " (no FLYWHEEL_ADMIN_KEYS configured: the control API is off)"
    raise Rejected(401, "unauthorized", f"missing or unknown admin key (Authorization: Bearer <admin key>){off}",
                   {"WWW-Authenticate": "Bearer"})


Admin = Annotated[Actor, Depends(admin)]


def check_org(state: ServiceState, org: str | None, claimed: Any, where: str) -> None:
    """A key speaks for its own organization only (no keys configured: nothing to check)."""
    if org is not None and claimed != org:
        known = "a known" if claimed in state.organizations else "an unknown"
        raise Rejected(403, "unknown_organization",
                       f"{where}: organization_id {claimed!r} is {known} organization, not this key's")


# ---- the body ------------------------------------------------------------------------------

async def raw_body(request: Request, state: State) -> bytes:
    """The body, refused beyond ``FLYWHEEL_MAX_BODY_BYTES`` (declared or while streaming, 413) or
    when it does not arrive within ``FLYWHEEL_BODY_TIMEOUT_S`` (408, connection closed); a client
    gone mid-body is one log line and a 400."""
    settings = state.settings
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, "body_too_large", f"request body of {declared} bytes exceeds {limit} bytes")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Rejected(413, "body_too_large", f"request body exceeds {limit} bytes")
            chunks.append(chunk)
    try:
        await asyncio.wait_for(read(), settings.body_timeout_s or None)
    except asyncio.TimeoutError:
        raise Rejected(408, "body_timeout", f"request body not received within {settings.body_timeout_s:g}s",
                       {"Connection": "close"}) from None
    except ClientDisconnect:
        log.warning("client %s disconnected before sending its whole body (%s %s, %d bytes read)",
                    request.client.host if request.client else "unknown", request.method, request.url.path, size)
        raise Rejected(400, "client_disconnected", "the client closed the connection mid-body") from None
    return b"".join(chunks)


RawBody = Annotated[bytes, Depends(raw_body)]


def parse_json(raw: bytes) -> Any:
    """Strict JSON (core/strict_json.py); a refusal is a 400 with its reason."""
    try:
        return strict_json.loads(raw)
    except strict_json.JsonRefused as exc:
        raise Rejected(400, exc.reason, exc.detail) from exc


async def json_body(raw: RawBody) -> Any:
    return parse_json(raw)


JsonBody = Annotated[Any, Depends(json_body)]


async def records_body(payload: JsonBody) -> list[Any]:
    """One record or an array of at most ``MAX_RECORDS_PER_REQUEST``."""
    records = payload if isinstance(payload, list) else [payload]
    if not records:
        raise Rejected(400, "wrong_shape", "an empty array")
    if len(records) > MAX_RECORDS_PER_REQUEST:
        raise Rejected(413, "too_many_records", f"{len(records)} records, at most {MAX_RECORDS_PER_REQUEST}")
    return records


Records = Annotated[list[Any], Depends(records_body)]


# ---- routes switched off -------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def switchable(name: str) -> Callable[[F], F]:
    """Mark a route as the one ``FLYWHEEL_DISABLED_ROUTES`` calls ``name`` (settings.ROUTES).

    A switched-off route is left out of the app (routers.include_routers), not refused at run
    time: it answers 404 ``not_found`` like any unknown path, whatever the method, is counted
    as ``unmatched`` and is absent from /docs."""
    if name not in ROUTES:
        raise ValueError(f"unknown switchable route {name!r}; known: {', '.join(ROUTES)}")

    def mark(endpoint: F) -> F:
        endpoint.switch = name  # type: ignore[attr-defined]
        return endpoint
    return mark


def route_enabled(route: BaseRoute, settings: ServiceSettings) -> bool:
    switch = getattr(getattr(route, "endpoint", None), "switch", None)
    return switch is None or settings.enabled(switch)
