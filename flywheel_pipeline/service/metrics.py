"""The service's Prometheus metrics (``GET /metrics``), one registry per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


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
        return generate_latest(self.registry)
