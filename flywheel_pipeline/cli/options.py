"""What the ``flywheel`` parsers share: the help formatter and the argument types."""

from __future__ import annotations

import argparse
from datetime import date


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, ``(default: 90)``. An option whose default is
    None says in its own words what happens without it; a flag is off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings
                or action.default is None or action.default is False or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def add_parser(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser whose help shows the defaults (subparsers do not inherit the formatter)."""
    if "help" in kwargs:
        kwargs.setdefault("description", kwargs["help"][:1].upper() + kwargs["help"][1:] + ".")
    return sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Dagster's and MLflow's log lines here too, instead of only in "
                             "$FLYWHEEL_HOME/logs/flywheel.log")


def iso_date(text: str) -> date:
    """argparse type: an ISO date (YYYY-MM-DD)."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None


def as_of_time(text: str) -> str:
    """argparse type: a time maturity is measured against, checked here and passed on as text
    (the run config of `outcome_labels` carries text)."""
    from flywheel_pipeline.core.label_policy import parse_as_of

    try:
        parse_as_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def int_at_least(minimum: int):
    """argparse type: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
