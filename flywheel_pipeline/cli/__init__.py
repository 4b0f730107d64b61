"""`flywheel` command line: demo, simulate, refresh, datasets, maintain, summary, sql, templates, validate, replies,
models, route, ui, serve, retrain, status, deploy, promote, rollback.

One module per command group (``demo``, ``simulate``, ``jobs``: refresh and datasets,
``maintenance``: maintain, ``warehouse``: summary and sql, ``validate``, ``replies``, ``models``: models
and route, ``ui``, ``serve``, ``training``: the control actions retrain, status, deploy, promote,
rollback), each with an ``add_parsers`` that registers its commands; ``options`` holds what the parsers share,
``output`` how the command prints (the story on stdout, the libraries' logs in a file).
"""

from __future__ import annotations

import argparse
import os
import sys

from flywheel_pipeline.cli import (demo, jobs, maintenance, models, replies, serve, simulate, templates, training, ui,
                                   validate, warehouse)
from flywheel_pipeline.cli.options import HelpFormatter
from flywheel_pipeline.cli.serve import bind_refusal
from flywheel_pipeline.landing_store import LandingUnavailable
from flywheel_pipeline.warehouse.concurrency import WriteConflict
from flywheel_pipeline.warehouse.extensions import MissingExtension
from flywheel_pipeline.warehouse.lake import WarehouseUnreachable, mask
from flywheel_pipeline.warehouse.schema import OutdatedWarehouse

__all__ = ["bind_refusal", "build_parser", "main"]

# the order of `flywheel --help`
COMMAND_GROUPS = (demo, simulate, jobs, maintenance, training, warehouse, templates, validate, replies, models, ui,
                  serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run one command; Ctrl-C or SIGTERM stops it cleanly (a Dagster run in progress is
    interrupted at its next step boundary and recorded as failed) with exit status 130."""
    import signal
    import threading

    args = build_parser().parse_args(argv)
    # everything the flywheel writes (landing, warehouse, exports, MLflow, Dagster storage) holds
    # personal data: readable by the owner only, in this process and the ones it starts
    os.umask(0o077)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"flywheel {args.command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except (OutdatedWarehouse, WarehouseUnreachable, WriteConflict, MissingExtension) as exc:
        # one line, credentials masked
        print(f"flywheel {args.command}: {mask(str(exc))}", file=sys.stderr, flush=True)
        return 2
    except LandingUnavailable as exc:  # one line naming the zone and endpoint, never a credential
        print(f"flywheel {args.command}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
