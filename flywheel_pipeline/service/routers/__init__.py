"""The service's routes, one module per concern: ``webhooks`` (SendGrid, HubSpot, Pipedrive),
``records`` (the outreach app's /messages and /replies), ``feedback`` (people's ratings,
/feedback), ``council`` (the AI council, /council), ``published`` (/route, /models, /leaderboard),
``metrics_api`` (AI-GYM's /api/v1 metric endpoints), ``health`` (/healthz, /metrics), ``training`` (the admin
control API, /training/*)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from flywheel_pipeline.service.dependencies import route_enabled
from flywheel_pipeline.service.routers import (council, feedback, health, metrics_api, published, records, training,
                                               webhooks)
from flywheel_pipeline.service.settings import ServiceSettings

ROUTERS = (webhooks.router, records.router, feedback.router, council.router, published.router, metrics_api.router,
           health.router, training.router)


def include_routers(app: FastAPI, settings: ServiceSettings) -> None:
    """Every route but those ``FLYWHEEL_DISABLED_ROUTES`` switches off (see ``switchable``)."""
    for router in ROUTERS:
        app.include_router(APIRouter(routes=[r for r in router.routes if route_enabled(r, settings)]))
