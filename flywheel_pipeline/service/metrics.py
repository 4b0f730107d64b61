"""The service's Prometheus metrics (``GET /metrics``), one registry per app instance, and the
middleware that counts and times every request."""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel_pipeline.service.errors import route_of


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("flywheel_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.accepted = Counter("flywheel_events_accepted", "Records written to the landing zone",
                                ["source"], registry=self.registry)
        self.rejected = Counter("flywheel_requests_rejected", "Requests refused, by route and reason",
                                ["route", "reason"], registry=self.registry)
        self.ignored = Counter("flywheel_events_ignored", "Provider events that are not outcomes we track",
                               ["source"], registry=self.registry)
        self.landing_bytes = Counter("flywheel_landing_bytes", "Bytes appended to landing segments",
                                     ["source"], registry=self.registry)
        self.latency = Histogram("flywheel_request_seconds", "Request latency by route", ["route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

    def render(self) -> bytes:
        """This process's metrics; with ``flywheel serve --workers N`` (prometheus_client's
        multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` set) the sums over every worker."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ObserveRequests:
    """Counts each answered request by route and status (``flywheel_requests_total``) and times it
    (``flywheel_request_seconds``). A plain ASGI middleware (Starlette's ``@app.middleware``
    costs a task and a stream per request); like it, it sits inside the handler of unexpected
    exceptions, so a 500 ``internal_error`` is counted in ``flywheel_requests_rejected_total`` only."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        await self.app(scope, receive, send_observed)
        route = route_of(scope)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)
