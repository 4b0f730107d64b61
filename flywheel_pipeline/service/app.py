"""The ingestion service: signed webhooks and the outreach app's records into the landing zone,
and the routing table out.

It only appends to the landing zone (never the warehouse) and only reads published files
(``routing.json``, ``leaderboard.json``, ``model_stats.json``, ``judges.json``), except the admin control API
(``/training/*``). A 2xx means the request's records are in an open landing segment in the kernel (a
``kill -9`` cannot lose them; fsync follows within ``fsync_interval_s``, see service/landing_writer.py).
Every refusal is a 4xx/5xx with a JSON body ``{"error": <reason code>, "detail": <words>}``, counted in
``/metrics`` by reason (service/errors.py; requests and latency: service/metrics.py).

Layout: state.py (what requests share, built once here), dependencies.py (authentication, rate
limits, the body), routers/ (``webhooks``: ``POST /webhooks/sendgrid``, ``/webhooks/hubspot``,
``/webhooks/pipedrive``; ``records``: ``POST /messages``, ``/replies``; ``feedback``: ``POST /feedback``;
``council``: ``POST /council`` (asks the catalog's models; lands preference pairs); ``published``:
``GET /route``, ``/models``, ``/leaderboard``; ``metrics_api``: ``GET /api/v1/...``; ``health``: ``GET /healthz``,
``/metrics``; ``training``: the admin control API ``/training/*``, which launches Dagster runs and changes
the model registry and routing through flywheel_pipeline/control.py, the one part of the service that
writes the warehouse).
"""

from __future__ import annotations

from fastapi import FastAPI

from flywheel_pipeline.service.errors import install_error_handlers
from flywheel_pipeline.service.hubspot_client import HubSpotClient
from flywheel_pipeline.service.metrics import ObserveRequests
from flywheel_pipeline.service.routers import include_routers
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline.service.state import ServiceState


def create_app(settings: ServiceSettings, *, hubspot: HubSpotClient | None = None) -> FastAPI:
    """Build the app. ``hubspot`` overrides the client built from the settings (tests)."""
    state = ServiceState.from_settings(settings, hubspot=hubspot)
    app = FastAPI(title="Outcome Flywheel ingestion service", lifespan=lambda app: state.running(),
                  description="Writes provider webhooks and outreach records into the landing zone.")
    app.state.service = state
    app.state.metrics = state.metrics
    install_error_handlers(app)
    app.add_middleware(ObserveRequests, metrics=state.metrics)
    include_routers(app, settings)
    return app

