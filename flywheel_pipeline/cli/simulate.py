"""``flywheel simulate``: only write the demo-world simulator's landing files."""

from __future__ import annotations

import argparse
from pathlib import Path

from flywheel_pipeline import paths
from flywheel_pipeline.cli.options import add_parser, iso_date, positive_int
from flywheel_pipeline.cli.output import say


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulated world's size and calendar, shared by ``demo`` and ``simulate``."""
    from flywheel_pipeline.simulator import SimConfig

    parser.add_argument("--seed", type=int, default=7,
                        help="seed of the simulated world: the same seed and dates make the same world")
    parser.add_argument("--days", type=positive_int, default=90, help="simulated days, ending the day before --end")
    parser.add_argument("--messages-per-day", type=positive_int, default=500,
                        help="messages the simulated outreach app sends per day, all organizations together")
    parser.add_argument("--leads-per-org", type=positive_int, default=3000,
                        help=f"leads in each of the {SimConfig.organizations} simulated organizations")
    parser.add_argument("--end", type=iso_date, help="first day NOT simulated (ISO date; default: today, UTC)")


def cmd_simulate(args: argparse.Namespace) -> int:
    from flywheel_pipeline.simulator import SIMULATOR_TAG, SimConfig, routing_history, simulate

    history = routing_history(args.follow_routing_from)
    cfg = SimConfig(seed=args.seed, days=args.days, messages_per_day=args.messages_per_day,
                    leads_per_org=args.leads_per_org, end=args.end, routing_history=history)
    if history:
        say(f"[{SIMULATOR_TAG}] the simulated outreach app follows the routing tables it saw: "
            + ", ".join(f"from {d}: " + "; ".join(f"{a['ab_group']} {a['traffic_pct']:g}%"
                                                   for f in t["families"].values() for a in f["arms"])
                        for d, t in history))
    location = paths.landing_location()
    s3 = location.startswith(paths.S3_SCHEME)
    # an s3:// landing zone: the world is written to a local staging directory, then uploaded
    target = paths.simulator_dir() / "landing" if s3 else Path(location)
    say(f"[{SIMULATOR_TAG}] writing {cfg.days} simulated days (seed {cfg.seed}) to {location}")
    result = simulate(target, cfg)
    if s3:
        from flywheel_pipeline.landing_store import open_store, upload_directory

        say(f"[{SIMULATOR_TAG}] {upload_directory(target, open_store(location))} files uploaded from {target}")
    say(f"[{SIMULATOR_TAG}] {result.days_written} days written, {result.days_skipped} already present: "
        f"{result.messages} messages, {result.sendgrid_lines} SendGrid lines (duplicates included, "
        f"{result.malformed_lines} deliberately truncated), {result.crm_lines} CRM events, "
        f"{result.reply_lines} replies, {result.feedback_lines} ratings")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "simulate", help="write the demo-world simulator's landing files")
    add_world_arguments(p)
    p.add_argument("--follow-routing-from", type=iso_date,
                   help="ISO date: from that day the simulated outreach app sends through $FLYWHEEL_HOME/routing.json "
                        "(default: it keeps to the routing tables it already used, none at first)")
    p.set_defaults(func=cmd_simulate)
