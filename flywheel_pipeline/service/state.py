"""What the service's requests share, built once per app: :class:`ServiceState` (on
``app.state.service``; routes get it with the ``State`` dependency).

It holds the settings, the landing writer (opened by :meth:`ServiceState.running`, the app's
lifespan), the metrics, the two rate limiters, the API keys, SendGrid's verification keys, the
HubSpot client, the published files the service reads (``routing.json``,
``leaderboard.json``, ``judges.json``, paths from flywheel_pipeline/paths.py via the settings), the
model catalog and the council's model clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from starlette.concurrency import run_in_threadpool

from flywheel_pipeline.core import strict_json
from flywheel_pipeline.core.catalog import Catalog, load_catalog
from flywheel_pipeline.core.model_snapshot import empty_snapshot
from flywheel_pipeline.core.signatures import load_sendgrid_public_key
from flywheel_pipeline.service.errors import Rejected
from flywheel_pipeline.service.hubspot_client import HubSpotClient
from flywheel_pipeline.service.landing_writer import SegmentWriter, recover
from flywheel_pipeline.service.council import ModelClients, prewarm_llm_judge
from flywheel_pipeline.service.metrics import ServiceMetrics
from flywheel_pipeline.service.rate_limit import RateLimiter
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline.service.spool import open_spool

log = logging.getLogger("flywheel.service")

RETRY_AFTER_S = 5  # while the landing zone is unavailable (503 landing_unavailable)


class PublishedJson:
    """A JSON file another process publishes by atomic rename; re-read when it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._value: Any = None

    def get(self) -> Any:
        """The file's value, None while it is not published."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            self._value, self._stamp = json.loads(self.path.read_text()), stamp
        return self._value


_EMPTY_SNAPSHOT = empty_snapshot()


def _line(record: Any) -> bytes:
    """One landing line: strict JSON (NaN/Infinity raise ValueError), UTF-8 (a lone surrogate
    raises UnicodeEncodeError)."""
    return strict_json.dumps(record).encode()


@dataclass
class ServiceState:
    settings: ServiceSettings
    metrics: ServiceMetrics
    limiter: RateLimiter  # requests per organization (or client) on /messages, /replies and /feedback
    auth_failures: RateLimiter  # failed authentications per client
    api_keys: list[tuple[str, bytes]]  # (organization, key); empty = no keys configured
    organizations: frozenset[str]
    sendgrid_keys: list[EllipticCurvePublicKey]  # empty = SendGrid events accepted unsigned
    hubspot: HubSpotClient | None  # None = no enrichment
    routing: PublishedJson
    leaderboard: PublishedJson
    judges: PublishedJson  # which judges judge_calibration trusts (POST /council)
    council_clients: ModelClients  # the council's AsyncOpenAI clients, closed on shutdown
    model_stats_file: PublishedJson | None = None  # model_stats.json (/route strategies, /models, /api/v1)
    writer: SegmentWriter | None = field(default=None)  # set while the app runs
    admin_keys: list[tuple[str, bytes]] = field(default_factory=list)  # (key id, key): the control API
    _catalog: tuple[Any, Catalog] | None = field(default=None)
    spool: Spool | None = field(default=None)  # with an s3:// landing zone, while the app runs

    @classmethod
    def from_settings(cls, settings: ServiceSettings, *, hubspot: HubSpotClient | None = None) -> ServiceState:
        """``hubspot`` overrides the client built from the settings (tests)."""
        if hubspot is None and settings.hubspot_access_token is not None:
            hubspot = HubSpotClient(settings.hubspot_api_base, settings.hubspot_access_token.get_secret_value(),
                                    settings.hubspot_message_id_property)
        return cls(settings=settings, metrics=ServiceMetrics(), limiter=RateLimiter(settings.rate_limit_per_minute),
                   auth_failures=RateLimiter(settings.auth_failures_per_minute),
                   api_keys=[(org, key.get_secret_value().encode())
                             for org, org_keys in settings.api_keys.items() for key in org_keys],
                   organizations=frozenset(settings.api_keys),
                   sendgrid_keys=[load_sendgrid_public_key(k) for k in settings.sendgrid_public_keys()],
                   hubspot=hubspot, routing=PublishedJson(settings.routing_path),
                   leaderboard=PublishedJson(settings.leaderboard_path),
                   admin_keys=[(name, key.get_secret_value().encode()) for name, key in settings.admin_keys.items()],
                   judges=PublishedJson(settings.judges_path or settings.home / "judges.json"),
                   council_clients=ModelClients(),
                   model_stats_file=PublishedJson(settings.model_stats_path or settings.home / "model_stats.json"))

    async def land(self, source: str, records: list[Any]) -> None:
        """Append the records to the source's open landing segment (in the kernel when this returns)."""
        try:
            lines = [_line(r) for r in records]
        except UnicodeEncodeError as exc:
            raise Rejected(400, "malformed_json", "a string holds a lone UTF-16 surrogate") from exc
        except ValueError as exc:
            raise Rejected(400, "invalid_number", f"not strict JSON: {exc}") from exc
        assert self.writer is not None, "the app is not running (no lifespan)"
        if self.spool is not None and not self.spool.available:  # never acknowledge what cannot be uploaded
            raise Rejected(503, "landing_unavailable",
                           "the landing zone cannot be reached; nothing was accepted, retry later",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        written = await run_in_threadpool(self.writer.append, source, lines)
        self.metrics.accepted.labels(source).inc(len(lines))
        self.metrics.landing_bytes.labels(source).inc(written)

    def routing_table(self) -> dict[str, Any]:
        """The published routing table, with ``FLYWHEEL_DEFAULT_MODEL`` when it names no default."""
        table = self.routing.get() or {"families": {}}
        if not table.get("default_model") and self.settings.default_model:
            table = {**table, "default_model": self.settings.default_model}
        return table

    def model_stats(self) -> dict[str, Any]:
        """The published measurements (an empty snapshot before the first model_choice_stats run)."""
        snapshot = self.model_stats_file.get() if self.model_stats_file is not None else None
        return snapshot if snapshot is not None else _EMPTY_SNAPSHOT

    def catalog(self, snapshot: dict[str, Any]) -> Catalog:
        """The model catalog (packaged, ``catalog.yaml``, the snapshot's registry models), rebuilt
        only when the override file or the snapshot changes (CatalogError on a bad override)."""
        override = self.settings.catalog_path or self.settings.home / "catalog.yaml"
        try:
            st = override.stat()
            stamp: Any = (st.st_mtime_ns, st.st_ino, st.st_size, id(snapshot))
        except FileNotFoundError:
            stamp = (None, id(snapshot))
        if self._catalog is None or self._catalog[0] != stamp:
            catalog = load_catalog(override).with_registry(tuple(r) for r in snapshot.get("registry_models") or ())
            self._catalog = (stamp, catalog)
        return self._catalog[1]

    def _open_writer(self) -> SegmentWriter:
        """A directory landing zone: seal what a dead process left open and write it directly. An
        s3:// one: open this replica's spool (take over dead replicas' spools, upload them) and
        write the spool, fsyncing every append, the uploader sending each sealed segment."""
        settings = self.settings
        if not settings.object_storage:
            landing = Path(settings.landing)
            landing.mkdir(mode=0o700, parents=True, exist_ok=True)  # FLYWHEEL_LANDING may be elsewhere
            for path in recover(landing):
                log.warning("recovered landing segment left open by a previous process: %s", path.name)
            return SegmentWriter(landing, max_bytes=settings.segment_max_bytes, max_age_s=settings.segment_max_age_s,
                                 fsync_interval_s=settings.fsync_interval_s)
        self.spool = spool = open_spool(settings)
        log.info("replica %s: spool %s, landing zone %s (%s)", spool.replica, spool.directory, settings.landing,
                 "reachable" if spool.available else f"UNAVAILABLE, answering 503: {spool.last_error}")
        spool.start()
        return SegmentWriter(spool.directory, max_bytes=settings.segment_max_bytes,
                             max_age_s=settings.segment_max_age_s, fsync_interval_s=settings.fsync_interval_s,
                             tag=spool.replica, on_seal=spool.wake, sync_each_append=True)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The app's lifespan: open the writer (see _open_writer), fsync on a one-second timer;
        on shutdown seal the open segments (and upload them), close the HubSpot client."""
        settings = self.settings
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)  # personal data: owner only
        self.writer = writer = await run_in_threadpool(self._open_writer)
        for route in settings.unverified_sources():
            log.warning("%s: requests are NOT authenticated (configure its secret or key, or switch it off "
                        "with FLYWHEEL_DISABLED_ROUTES)", route)
        if settings.council_llm_judge:
            prewarm_llm_judge()
        task = asyncio.create_task(self._maintain(writer))
        try:
            yield
        finally:
            task.cancel()
            sealed = await run_in_threadpool(writer.close)
            log.info("sealed %d landing segments on shutdown", len(sealed))
            if self.spool is not None and not await run_in_threadpool(self.spool.close):
                log.error("%d sealed segments stay in the spool %s (landing zone unavailable): the next start "
                          "uploads them", self.spool.pending(), self.spool.directory)
            if self.hubspot is not None:
                self.hubspot.close()
            await self.council_clients.close()

    async def _maintain(self, writer: SegmentWriter) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.settings.fsync_interval_s or 1.0))
            try:
                await run_in_threadpool(writer.maintain)
            except OSError:
                log.exception("landing segment maintenance failed; retrying")
