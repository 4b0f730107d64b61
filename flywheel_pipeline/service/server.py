"""Running the ingestion service under uvicorn with timeouts and limits.

* Header read timeout (``header_timeout_s``): a connection whose request line and headers are
  not complete within it, from when it opens or from its previous response, is closed (one
  log line), so slow or idle connections cannot pile up (uvicorn itself only times out idle
  keep-alive connections, and only until their first byte). The protocol is the one uvicorn
  would pick (httptools when installed, else h11) with this timer mixed in.
* Body read timeout (``body_timeout_s``): in the app, 408 ``body_timeout`` (service/dependencies.py).
* Concurrency limit (``max_connections``): uvicorn's ``limit_concurrency``: beyond it new
  requests get a 503 (plain text, from uvicorn) and may retry.
* A client that disconnects mid-body is one log line (service/dependencies.py), not a traceback.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from flywheel_pipeline.service.settings import WORKERS_VARIABLE, ServiceSettings

log = logging.getLogger("flywheel.service")


def _uvicorn_protocol() -> type[asyncio.Protocol]:
    """The HTTP protocol uvicorn's "auto" picks: httptools when installed (about twice as fast
    as h11 here), else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol


class HeaderTimeout:
    """Mixed into uvicorn's HTTP protocol: closes connections that do not send a request's
    headers in time (both uvicorn protocols have ``cycle``, ``loop``, ``transport`` and
    ``on_response_complete``)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        in_progress = self.cycle is not None and not self.cycle.response_complete
        if in_progress or self.transport.is_closing():
            return  # this request's headers arrived; it is served (the body has its own timeout)
        client = "%s:%d" % self.client if self.client else "unknown"
        log.warning("closed connection from %s: no complete request headers within %gs", client,
                 self.header_timeout_s)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


def protocol_for(settings: ServiceSettings) -> type[asyncio.Protocol]:
    return type("FlywheelHttpProtocol", (HeaderTimeout, _uvicorn_protocol()),
                {"header_timeout_s": settings.header_timeout_s})


class WorkerHttpProtocol(HeaderTimeout, _uvicorn_protocol()):  # type: ignore[misc]
    """The protocol of ``flywheel serve --workers N``'s worker processes: a class of this module,
    so uvicorn's supervisor can hand it to the spawned workers by name; each worker sets
    ``header_timeout_s`` from its own settings (:func:`worker_app`)."""


def uvicorn_config(app, settings: ServiceSettings, *, host: str, port: int, log_level: str = "info",
                   http: type[asyncio.Protocol] | None = None, **options) -> uvicorn.Config:
    """``options``: more of uvicorn.Config's (the worker supervisor's factory, workers, log_config)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=http or protocol_for(settings),
                          limit_concurrency=settings.max_connections, timeout_keep_alive=5,
                          timeout_graceful_shutdown=10, **options)


def serve(app, settings: ServiceSettings, *, host: str, port: int, log_level: str = "info") -> None:
    uvicorn.Server(uvicorn_config(app, settings, host=host, port=port, log_level=log_level)).run()


def worker_app():
    """The app of one worker process (uvicorn's factory, run in the worker): the settings from
    the environment the supervisor passed on."""
    from flywheel_pipeline.service.app import create_app

    settings = ServiceSettings.from_env()
    WorkerHttpProtocol.header_timeout_s = settings.header_timeout_s
    return create_app(settings)


def worker_logging(log_level: str) -> dict:
    """uvicorn's logging configuration plus the service's own loggers (``flywheel.*``, as
    ``flywheel serve`` logs them in one process), applied by uvicorn in every worker."""
    import copy

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["flywheel"] = {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"}
    config["handlers"]["flywheel"] = {"formatter": "flywheel", "class": "logging.StreamHandler",
                                      "stream": "ext://sys.stderr"}
    config["loggers"]["flywheel"] = {"handlers": ["flywheel"], "level": log_level.upper(), "propagate": False}
    return config


def serve_workers(settings: ServiceSettings, *, host: str, port: int, log_level: str = "info") -> None:
    """``settings.workers`` processes answering on one listening socket (uvicorn's supervisor:
    the kernel hands each new connection to one of them; a worker that dies is replaced; SIGTERM
    or SIGINT stops them all gracefully, each sealing its open segments). What each process
    keeps for itself: its landing segments (names unique per writer; see service/landing_writer.py)
    or, with an ``s3://`` landing zone, its own spool (``<FLYWHEEL_REPLICA_ID>-w<k>``); its rate
    limits (per process); its published-file caches. Prometheus metrics are summed over the
    workers (prometheus_client's multiprocess mode, in a directory removed on exit)."""
    import os
    import shutil
    import tempfile

    from uvicorn.supervisors import Multiprocess

    metrics_dir = tempfile.mkdtemp(prefix=f"flywheel-metrics-{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before the workers import prometheus_client
    os.environ[WORKERS_VARIABLE] = str(settings.workers)
    config = uvicorn_config("flywheel_pipeline.service.server:worker_app", settings, host=host, port=port,
                            log_level=log_level, http=WorkerHttpProtocol, factory=True, workers=settings.workers,
                            log_config=worker_logging(log_level))
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
