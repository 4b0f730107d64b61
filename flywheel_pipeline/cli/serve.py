"""``flywheel serve``: the ingestion service (webhooks and records into the landing zone)."""

from __future__ import annotations

import argparse
import sys

from flywheel_pipeline.cli.options import add_parser
from flywheel_pipeline.cli.output import say


def bind_refusal(host: str, settings, *, allow_unauthenticated: bool) -> str | None:
    """Why `flywheel serve` must not listen on ``host``: a non-loopback address while an enabled
    route accepts unauthenticated requests (None: it may)."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    open_routes = settings.unverified_sources()
    if loopback or not open_routes or allow_unauthenticated:
        return None
    return (f"refusing to listen on {host}: these enabled routes accept unauthenticated requests: "
            f"{', '.join(open_routes)} (configure their secrets or FLYWHEEL_API_KEYS, switch them off with "
            "FLYWHEEL_DISABLED_ROUTES, or pass --allow-unauthenticated)")


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from flywheel_pipeline.service.app import create_app
    from flywheel_pipeline.service.server import serve, serve_workers
    from flywheel_pipeline.service.settings import ServiceSettings

    try:
        settings = ServiceSettings.from_env()
    except ValueError as exc:
        print(f"flywheel serve: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.workers is not None:
        settings = settings.model_copy(update={"workers": args.workers})
    if settings.object_storage and settings.replica_id:
        from flywheel_pipeline.service.spool import held, worker_replicas

        if any(held(settings.spool, name) for name in worker_replicas(settings.replica_id, settings.workers)):
            print(f"flywheel serve: FLYWHEEL_REPLICA_ID={settings.replica_id} is in use by another live process on "
                  f"the spool {settings.spool}: give each replica its own id", file=sys.stderr)
            return 2
    refusal = bind_refusal(args.host, settings, allow_unauthenticated=args.allow_unauthenticated)
    if refusal:
        print(f"flywheel serve: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = f", {settings.workers} worker processes" if settings.workers > 1 else ""
    say(f"flywheel serve: landing zone {settings.landing}, http://{args.host}:{args.port}{workers}")
    try:
        if settings.workers > 1:
            serve_workers(settings, host=args.host, port=args.port, log_level=args.log_level.lower())
        else:
            serve(create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level.lower())
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully (segments sealed), then re-raised the signal
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "serve", help="run the ingestion service (webhooks and records into the landing zone)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; beyond loopback only when every "
                                                       "enabled route is authenticated")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=None, choices=range(1, 65), metavar="N",
                   help="processes answering on the port (1-64; default FLYWHEEL_SERVE_WORKERS or 1): about one "
                        "per core; rate limits count per process")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the service's log level")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="listen beyond loopback although some enabled route accepts unauthenticated requests")
    p.set_defaults(func=cmd_serve)
