"""The ingestion service: signed webhooks and the outreach app's records into the landing zone,
and the routing table out.

It only appends to the landing zone (never the warehouse) and only reads published files
(``routing.json``, ``leaderboard.json``). A 2xx means the request's records are in an open
landing segment in the kernel (a ``kill -9`` cannot lose them; fsync follows within
``fsync_interval_s``, see service/landing_writer.py). Every refusal is a 4xx/5xx with a JSON
body ``{"error": <reason code>, "detail": <words>}``, counted in ``/metrics`` by reason.

Routes: ``POST /webhooks/sendgrid``, ``POST /webhooks/hubspot``, ``POST /webhooks/pipedrive``,
``POST /messages``, ``POST /replies``, ``GET /route``, ``GET /leaderboard``, ``GET /healthz``,
``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from flywheel_pipeline.core.crm_webhooks import Normalized, PayloadError, hubspot_facts, pipedrive_facts
from flywheel_pipeline.core import strict_json
from flywheel_pipeline.core.inbound_records import RecordError, check_message, check_reply, check_sendgrid_events
from flywheel_pipeline.core.signatures import (hubspot_signed_uri, load_sendgrid_public_key, verify_hubspot_v3,
                                               verify_sendgrid)
from flywheel_pipeline.routing import choose_model
from flywheel_pipeline.service.hubspot_client import HubSpotClient, HubSpotUnavailable
from flywheel_pipeline.service.landing_writer import SegmentWriter, recover
from flywheel_pipeline.service.metrics import ServiceMetrics
from flywheel_pipeline.service.rate_limit import RateLimiter
from flywheel_pipeline.service.settings import ServiceSettings

log = logging.getLogger("flywheel.service")

MAX_RECORDS_PER_REQUEST = 1000
HUBSPOT_CONCURRENCY = 8


class Rejected(Exception):
    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


def _dumps(record: Any) -> bytes:
    """One landing line: strict JSON (NaN/Infinity raise ValueError), UTF-8 (a lone surrogate
    raises UnicodeEncodeError)."""
    return strict_json.dumps(record).encode()


_HTTP_REASONS = {404: "not_found", 405: "method_not_allowed"}


class _PublishedJson:
    """A JSON file another process publishes by atomic rename; re-read when it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._value: Any = None

    def get(self) -> Any:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            self._value, self._stamp = json.loads(self.path.read_text()), stamp
        return self._value


def create_app(settings: ServiceSettings, *, hubspot: HubSpotClient | None = None) -> FastAPI:
    """Build the app. ``hubspot`` overrides the client built from the settings (tests)."""
    sendgrid_keys = [load_sendgrid_public_key(k) for k in settings.sendgrid_public_keys()]
    if hubspot is None and settings.hubspot_access_token is not None:
        hubspot = HubSpotClient(settings.hubspot_api_base, settings.hubspot_access_token.get_secret_value(),
                                settings.hubspot_message_id_property)
    metrics = ServiceMetrics()
    limiter = RateLimiter(settings.rate_limit_per_minute)
    auth_failures = RateLimiter(settings.auth_failures_per_minute)
    keys = [(org, key.get_secret_value().encode()) for org, org_keys in settings.api_keys.items() for key in org_keys]
    organizations = set(settings.api_keys)
    routing = _PublishedJson(settings.home / "routing.json")
    leaderboard = _PublishedJson(settings.home / "leaderboard.json")
    state: dict[str, Any] = {}

    async def maintain(writer: SegmentWriter) -> None:
        while True:
            await asyncio.sleep(min(1.0, settings.fsync_interval_s or 1.0))
            try:
                await run_in_threadpool(writer.maintain)
            except OSError:
                log.exception("landing segment maintenance failed; retrying")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)  # personal data: owner only
        settings.landing.mkdir(mode=0o700, exist_ok=True)
        for path in recover(settings.landing):
            log.warning("recovered landing segment left open by a previous process: %s", path.name)
        writer = SegmentWriter(settings.landing, max_bytes=settings.segment_max_bytes,
                               max_age_s=settings.segment_max_age_s, fsync_interval_s=settings.fsync_interval_s)
        state["writer"] = writer
        for route in settings.unverified_sources():
            log.warning("%s: requests are NOT authenticated (configure its secret or key, or switch it off "
                        "with FLYWHEEL_DISABLED_ROUTES)", route)
        task = asyncio.create_task(maintain(writer))
        try:
            yield
        finally:
            task.cancel()
            sealed = await run_in_threadpool(writer.close)
            log.info("sealed %d landing segments on shutdown", len(sealed))
            if hubspot is not None:
                hubspot.close()

    app = FastAPI(title="Outcome Flywheel ingestion service", lifespan=lifespan,
                  description="Writes provider webhooks and outreach records into the landing zone.")

    @app.exception_handler(Rejected)
    async def _rejected(request: Request, exc: Rejected) -> JSONResponse:
        if exc.status == 401:  # a failed authentication counts against the client's budget
            auth_failures.acquire(_client(request))
        metrics.rejected.labels(_route(request), exc.reason).inc()
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return await _rejected(request, Rejected(422, "invalid_request", problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = _HTTP_REASONS.get(exc.status_code, f"http_{exc.status_code}")
        return await _rejected(request, Rejected(exc.status_code, reason, str(exc.detail),
                                                 dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, never a bad payload (those are 4xx): one log line with the traceback, counted
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return await _rejected(request, Rejected(500, "internal_error", "unexpected error (logged)"))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = _route(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def body(request: Request) -> bytes:
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

    def parse(raw: bytes) -> Any:
        try:
            return strict_json.loads(raw)
        except strict_json.JsonRefused as exc:
            raise Rejected(400, exc.reason, exc.detail) from exc

    async def land(source: str, records: list[Any]) -> None:
        try:
            lines = [_dumps(r) for r in records]
        except UnicodeEncodeError as exc:
            raise Rejected(400, "malformed_json", "a string holds a lone UTF-16 surrogate") from exc
        except ValueError as exc:
            raise Rejected(400, "invalid_number", f"not strict JSON: {exc}") from exc
        written = await run_in_threadpool(state["writer"].append, source, lines)
        metrics.accepted.labels(source).inc(len(lines))
        metrics.landing_bytes.labels(source).inc(written)

    def auth_gate(request: Request) -> None:
        """A client over its failed-authentication budget is refused before its credentials are
        checked, so keys and secrets cannot be guessed at speed."""
        wait = auth_failures.blocked(_client(request))
        if wait:
            raise Rejected(429, "rate_limited", f"more than {settings.auth_failures_per_minute} failed "
                           "authentications a minute from this client", {"Retry-After": str(wait)})

    def authenticate(request: Request) -> str | None:
        """The organization of the request's API key; None when no keys are configured."""
        if not keys:
            return None
        auth_gate(request)
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        found = None
        for org, key in keys:  # every key compared, in constant time each
            if hmac.compare_digest(given.encode(), key) and given:
                found = org
        if found is not None:
            return found
        raise Rejected(401, "unauthorized", "missing or unknown API key (Authorization: Bearer <key>)",
                       {"WWW-Authenticate": "Bearer"})

    def throttle(key: str) -> None:
        wait = limiter.acquire(key)
        if wait:
            raise Rejected(429, "rate_limited", f"more than {settings.rate_limit_per_minute} requests a minute "
                           f"for {key}", {"Retry-After": str(wait)})

    def check_org(org: str | None, claimed: Any, where: str) -> None:
        """A key speaks for its own organization only (no keys configured: nothing to check)."""
        if org is not None and claimed != org:
            known = "a known" if claimed in organizations else "an unknown"
            raise Rejected(403, "unknown_organization",
                           f"{where}: organization_id {claimed!r} is {known} organization, not this key's")

    def records_of(payload: Any) -> list[Any]:
        records = payload if isinstance(payload, list) else [payload]
        if not records:
            raise Rejected(400, "wrong_shape", "an empty array")
        if len(records) > MAX_RECORDS_PER_REQUEST:
            raise Rejected(413, "too_many_records", f"{len(records)} records, at most {MAX_RECORDS_PER_REQUEST}")
        return records

    # ---- provider webhooks ------------------------------------------------------------

    def enabled(name: str, decorator):
        """Register the route unless FLYWHEEL_DISABLED_ROUTES switches it off (then it is a 404)."""
        return decorator if settings.enabled(name) else (lambda fn: fn)

    @enabled("sendgrid", app.post("/webhooks/sendgrid"))
    async def sendgrid(request: Request) -> dict:
        if sendgrid_keys:
            auth_gate(request)
        raw = await body(request)
        if sendgrid_keys:
            verdicts = [verify_sendgrid(key, request.headers.get("x-twilio-email-event-webhook-signature"),
                                        request.headers.get("x-twilio-email-event-webhook-timestamp"), raw,
                                        max_age_s=settings.sendgrid_max_age_s) for key in sendgrid_keys]
            if not any(v.ok for v in verdicts):  # any key in force (rotation) may have signed it
                raise Rejected(401, _signature_reason(verdicts[0].reason), verdicts[0].reason)
        events = parse(raw)
        if not isinstance(events, list):
            raise Rejected(400, "wrong_shape", "SendGrid posts a JSON array of event objects")
        for i, event in enumerate(events):
            if not isinstance(event, dict):
                raise Rejected(400, "wrong_shape", f"element {i} is not an event object")
        try:
            check_sendgrid_events(events)
        except RecordError as exc:
            raise Rejected(400, "invalid_record", str(exc)) from exc
        if events:
            await land("sendgrid", events)
        return {"accepted": len(events)}

    @enabled("hubspot", app.post("/webhooks/hubspot"))
    async def hubspot_webhook(request: Request) -> dict:
        if settings.hubspot_client_secret is not None:
            auth_gate(request)
        raw = await body(request)
        if settings.hubspot_client_secret is not None:
            uri = hubspot_signed_uri(_public_url(request, settings.public_base_url))
            verdict = verify_hubspot_v3(settings.hubspot_client_secret.get_secret_value(), request.method, uri, raw,
                                        request.headers.get("x-hubspot-signature-v3"),
                                        request.headers.get("x-hubspot-request-timestamp"))
            if not verdict.ok:
                raise Rejected(401, _signature_reason(verdict.reason), verdict.reason)
        try:
            normalized = hubspot_facts(parse(raw), won_stages=settings.hubspot_won_stages,
                                       lost_stages=settings.hubspot_lost_stages)
        except PayloadError as exc:
            raise Rejected(400, "wrong_shape", str(exc)) from exc
        if hubspot is not None and normalized.facts:
            # HubSpot batches up to 100 events and wants an answer within seconds: read them concurrently
            limit = asyncio.Semaphore(HUBSPOT_CONCURRENCY)

            async def enrich(fact) -> None:
                async with limit:
                    await run_in_threadpool(hubspot.enrich, fact)
            try:
                await asyncio.gather(*(enrich(f) for f in normalized.facts))
            except HubSpotUnavailable as exc:
                log.error("HubSpot enrichment failed, asking HubSpot to retry: %s", exc)
                raise Rejected(503, "crm_api_unavailable", str(exc), {"Retry-After": "60"}) from exc
        return await _land_facts("hubspot", normalized)

    @enabled("pipedrive", app.post("/webhooks/pipedrive"))
    async def pipedrive_webhook(request: Request) -> dict:
        if settings.pipedrive_user and settings.pipedrive_password is not None:
            auth_gate(request)
            _check_basic(request.headers.get("authorization"), settings.pipedrive_user,
                         settings.pipedrive_password.get_secret_value())
        raw = await body(request)
        try:
            normalized = pipedrive_facts(parse(raw), message_id_field=settings.pipedrive_message_id_field)
        except PayloadError as exc:
            raise Rejected(400, "wrong_shape", str(exc)) from exc
        return await _land_facts("pipedrive", normalized)

    async def _land_facts(provider: str, normalized: Normalized) -> dict:
        metrics.ignored.labels(provider).inc(normalized.ignored)
        if normalized.facts:
            await land("crm", [f.record() for f in normalized.facts])
        unattributed = sum(not f.attributed for f in normalized.facts)
        if unattributed:
            log.warning("%s: %d event(s) carry no message id or email; ingestion will quarantine them",
                        provider, unattributed)
        return {"accepted": len(normalized.facts), "ignored": normalized.ignored, "unattributed": unattributed}

    # ---- the outreach app's own records ------------------------------------------------

    @enabled("messages", app.post("/messages"))
    async def messages(request: Request) -> dict:
        org = authenticate(request)
        throttle(org or _client(request))
        records = records_of(parse(await body(request)))
        for i, record in enumerate(records):
            try:
                check_message(record)
            except RecordError as exc:
                raise Rejected(400, "invalid_record", f"record {i}: {exc}") from exc
            check_org(org, record.get("organization_id"), f"record {i}")
        await land("messages", records)
        return {"accepted": len(records)}

    @enabled("replies", app.post("/replies"))
    async def replies(request: Request) -> dict:
        org = authenticate(request)
        throttle(org or _client(request))
        records = records_of(parse(await body(request)))
        threaded = 0
        for i, record in enumerate(records):
            try:
                mid = check_reply(record, settings.message_id_domains)
            except RecordError as exc:
                raise Rejected(400, "invalid_record", f"record {i}: {exc}") from exc
            if mid:
                record["message_id"] = mid
                threaded += 1
            if org is not None:  # the reply is the key's organization's: it attaches to its messages only
                if record.get("organization_id") is not None:
                    check_org(org, record["organization_id"], f"record {i}")
                record["organization_id"] = org
        await land("replies", records)
        return {"accepted": len(records), "attributed_by_headers": threaded}

    # ---- published files -----------------------------------------------------------------

    @enabled("route", app.get("/route"))
    async def route(request: Request, lead_id: str = Query(min_length=1),
                    organization_id: str = Query(min_length=1), task_type: str = "all") -> dict:
        org = authenticate(request)
        check_org(org, organization_id, "query")
        table = routing.get() or {"families": {}}
        if not table.get("default_model") and settings.default_model:
            table = {**table, "default_model": settings.default_model}
        try:
            return choose_model(lead_id, organization_id, task_type, table=table)
        except LookupError as exc:
            raise Rejected(404, "no_route", str(exc)) from exc

    @enabled("leaderboard", app.get("/leaderboard"))
    async def get_leaderboard(request: Request) -> Any:
        org = authenticate(request)
        board = leaderboard.get()
        if board is None:
            raise Rejected(404, "not_published", "no leaderboard yet (materialize model_leaderboard)")
        if org is None:  # no keys configured (loopback development): the whole file
            return board
        # a key sees its organization's board only: models rated on its own messages
        return {**{k: v for k, v in board.items() if k not in ("models", "organizations")},
                "organization_id": org, "models": (board.get("organizations") or {}).get(org, [])}

    @app.get("/healthz")
    async def healthz() -> dict:
        writer: SegmentWriter | None = state.get("writer")
        return {"status": "ok" if writer is not None else "starting", "landing": str(settings.landing),
                "open_segments": writer.open_segments() if writer else {},
                "unauthenticated": settings.unverified_sources(),
                "hubspot_enrichment": hubspot is not None,
                "routing_published": routing.path.exists(), "leaderboard_published": leaderboard.path.exists()}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.state.metrics = metrics
    return app


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _client(request: Request) -> str:
    return f"client:{request.client.host if request.client else 'unknown'}"


def _public_url(request: Request, base: str | None) -> str:
    if not base:
        return str(request.url)
    query = request.url.query
    return base.rstrip("/") + request.url.path + (f"?{query}" if query else "")


def _signature_reason(reason: str) -> str:
    if reason.startswith("stale"):
        return "stale_timestamp"
    if reason.startswith("missing"):
        return "missing_signature"
    return "bad_signature"


def _check_basic(header: str | None, user: str, password: str) -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="flywheel"'}
    if not header or not header.lower().startswith("basic "):
        raise Rejected(401, "unauthorized", "HTTP Basic credentials required", challenge)
    try:
        given_user, _, given_password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Rejected(401, "unauthorized", "malformed Basic credentials", challenge) from exc
    ok = hmac.compare_digest(given_user.encode(), user.encode()) & \
        hmac.compare_digest(given_password.encode(), password.encode())
    if not ok:
        raise Rejected(401, "unauthorized", "wrong Basic credentials", challenge)
