"""Provider webhooks: ``POST /webhooks/sendgrid``, ``/webhooks/hubspot``, ``/webhooks/pipedrive``.

Each provider's dependency checks what it signs or sends as credentials (when configured: a
SendGrid key, the HubSpot client secret, Pipedrive's Basic user and password; a client over
its failed-authentication budget is refused first), then core/ turns the payload into landing
records (SendGrid events as they are, CRM events as ``crm`` facts). Not rate limited: providers
retry refused deliveries.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from flywheel_pipeline.core.crm_webhooks import Normalized, PayloadError, hubspot_facts, pipedrive_facts
from flywheel_pipeline.core.inbound_records import RecordError, check_sendgrid_events
from flywheel_pipeline.core.signatures import hubspot_signed_uri, verify_hubspot_v3, verify_sendgrid
from flywheel_pipeline.service.dependencies import RawBody, State, auth_gate, parse_json, switchable
from flywheel_pipeline.service.errors import Rejected
from flywheel_pipeline.service.hubspot_client import HubSpotUnavailable
from flywheel_pipeline.service.state import ServiceState

log = logging.getLogger("flywheel.service")

HUBSPOT_CONCURRENCY = 8

router = APIRouter(prefix="/webhooks")


# ---- SendGrid ------------------------------------------------------------------------------

async def sendgrid_gate(request: Request, state: State) -> None:
    """The failed-authentication gate, before the body is read, when events must be signed."""
    if state.sendgrid_keys:
        auth_gate(request, state)


async def sendgrid_events(request: Request, state: State, _: Annotated[None, Depends(sendgrid_gate)],
                          raw: RawBody) -> list[dict[str, Any]]:
    """The Event Webhook's events: signed by a key in force (when keys are configured), a JSON
    array of event objects that pass core's checks."""
    if state.sendgrid_keys:
        verdicts = [verify_sendgrid(key, request.headers.get("x-twilio-email-event-webhook-signature"),
                                    request.headers.get("x-twilio-email-event-webhook-timestamp"), raw,
                                    max_age_s=state.settings.sendgrid_max_age_s) for key in state.sendgrid_keys]
        if not any(v.ok for v in verdicts):  # any key in force (rotation) may have signed it
            raise Rejected(401, _signature_reason(verdicts[0].reason), verdicts[0].reason)
    events = parse_json(raw)
    if not isinstance(events, list):
        raise Rejected(400, "wrong_shape", "SendGrid posts a JSON array of event objects")
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise Rejected(400, "wrong_shape", f"element {i} is not an event object")
    try:
        check_sendgrid_events(events)
    except RecordError as exc:
        raise Rejected(400, "invalid_record", str(exc)) from exc
    return events


@router.post("/sendgrid")
@switchable("sendgrid")
async def sendgrid(state: State, events: Annotated[list[dict[str, Any]], Depends(sendgrid_events)]) -> dict:
    if events:
        await state.land("sendgrid", events)
    return {"accepted": len(events)}


# ---- HubSpot -------------------------------------------------------------------------------

async def hubspot_gate(request: Request, state: State) -> None:
    """The failed-authentication gate, before the body is read, when events must be signed."""
    if state.settings.hubspot_client_secret is not None:
        auth_gate(request, state)


async def hubspot_outcomes(request: Request, state: State, _: Annotated[None, Depends(hubspot_gate)],
                           raw: RawBody) -> Normalized:
    """The events' outcomes: signed with the client secret (signature v3, when configured),
    normalized by core/, then enriched from the CRM API (when a token is configured: HubSpot's
    webhooks carry object ids only); the API failing is a 503 so HubSpot delivers again."""
    settings = state.settings
    if settings.hubspot_client_secret is not None:
        uri = hubspot_signed_uri(_public_url(request, settings.public_base_url))
        verdict = verify_hubspot_v3(settings.hubspot_client_secret.get_secret_value(), request.method, uri, raw,
                                    request.headers.get("x-hubspot-signature-v3"),
                                    request.headers.get("x-hubspot-request-timestamp"))
        if not verdict.ok:
            raise Rejected(401, _signature_reason(verdict.reason), verdict.reason)
    try:
        normalized = hubspot_facts(parse_json(raw), won_stages=settings.hubspot_won_stages,
                                   lost_stages=settings.hubspot_lost_stages)
    except PayloadError as exc:
        raise Rejected(400, "wrong_shape", str(exc)) from exc
    if state.hubspot is not None and normalized.facts:
        try:
            await _enrich(state, normalized)
        except HubSpotUnavailable as exc:
            log.error("HubSpot enrichment failed, asking HubSpot to retry: %s", exc)
            raise Rejected(503, "crm_api_unavailable", str(exc), {"Retry-After": "60"}) from exc
    return normalized


async def _enrich(state: ServiceState, normalized: Normalized) -> None:
    """HubSpot batches up to 100 events and wants an answer within seconds: read them concurrently."""
    assert state.hubspot is not None
    client, limit = state.hubspot, asyncio.Semaphore(HUBSPOT_CONCURRENCY)

    async def enrich(fact) -> None:
        async with limit:
            await run_in_threadpool(client.enrich, fact)
    await asyncio.gather(*(enrich(f) for f in normalized.facts))


@router.post("/hubspot")
@switchable("hubspot")
async def hubspot_webhook(state: State, outcomes: Annotated[Normalized, Depends(hubspot_outcomes)]) -> dict:
    return await land_facts(state, "hubspot", outcomes)


# ---- Pipedrive -----------------------------------------------------------------------------

async def pipedrive_credentials(request: Request, state: State) -> None:
    """HTTP Basic with ``FLYWHEEL_PIPEDRIVE_USER``/``_PASSWORD`` (when set), checked before the body is read."""
    settings = state.settings
    if settings.pipedrive_user and settings.pipedrive_password is not None:
        auth_gate(request, state)
        _check_basic(request.headers.get("authorization"), settings.pipedrive_user,
                     settings.pipedrive_password.get_secret_value())


async def pipedrive_outcomes(state: State, _: Annotated[None, Depends(pipedrive_credentials)],
                             raw: RawBody) -> Normalized:
    """A webhooks v2 payload normalized by core/."""
    try:
        return pipedrive_facts(parse_json(raw), message_id_field=state.settings.pipedrive_message_id_field)
    except PayloadError as exc:
        raise Rejected(400, "wrong_shape", str(exc)) from exc


@router.post("/pipedrive")
@switchable("pipedrive")
async def pipedrive_webhook(state: State, outcomes: Annotated[Normalized, Depends(pipedrive_outcomes)]) -> dict:
    return await land_facts(state, "pipedrive", outcomes)


# ---- helpers -------------------------------------------------------------------------------

async def land_facts(state: ServiceState, provider: str, normalized: Normalized) -> dict:
    """Land a CRM's outcomes as ``crm`` records; events we do not track are counted, not landed."""
    state.metrics.ignored.labels(provider).inc(normalized.ignored)
    if normalized.facts:
        await state.land("crm", [f.record() for f in normalized.facts])
    unattributed = sum(not f.attributed for f in normalized.facts)
    if unattributed:
        log.warning("%s: %d event(s) carry no message id or email; ingestion will quarantine them",
                    provider, unattributed)
    return {"accepted": len(normalized.facts), "ignored": normalized.ignored, "unattributed": unattributed}


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
