"""The service's routes, one module per concern: ``webhooks`` (SendGrid, HubSpot, Pipedrive),
``records`` (the outreach app's /messages and /replies), ``feedback`` (people's ratings,
/feedback), ``published`` (/route, /models, /leaderboard),
``metrics_api`` (AI-GYM's /api/v1 metric endpoints), ``health`` (/healthz, /metrics)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from flywheel_pipeline.service.dependencies import route_enabled
from flywheel_pipeline.service.routers import feedback, health, metrics_api, published, records, webhooks
from flywheel_pipeline.service.settings import ServiceSettings

ROUTERS = (webhooks.router, records.router, feedback.router, published.router, metrics_api.router, health.router)


def include_routers(app: FastAPI, settings: ServiceSettings) -> None:
    """Every route but those ``FLYWHEEL_DISABLED_ROUTES`` switches off (see ``switchable``)."""
    for router in ROUTERS:
        app.include_router(APIRouter(routes=[r for r in router.routes if route_enabled(r, settings)]))
