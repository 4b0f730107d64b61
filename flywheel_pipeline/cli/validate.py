"""``flywheel validate``: check a chat (SFT) or preference (DPO) fine-tuning JSONL file."""

from __future__ import annotations

import argparse
import json
import sys

from flywheel_pipeline.cli.options import add_parser
from flywheel_pipeline.cli.output import say
from flywheel_pipeline.core.models import DEFAULT_MODEL


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 for a valid file, 1 for an invalid one (its errors, and no token or cost estimate),
    2 when the file cannot be read."""
    from flywheel_pipeline.core.finetune_format import validate_file

    try:
        report = validate_file(args.file, kind=args.kind, model=args.model, epochs=args.epochs,
                               price_per_million=args.price_per_million)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"flywheel validate: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    say(json.dumps(report.as_dict(), indent=2) if args.json else report.to_text(estimates=report.ok))
    return 0 if report.ok else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "validate", help="validate a chat (SFT) or preference (DPO) fine-tuning JSONL file")
    p.add_argument("file", help="the JSONL file")
    p.add_argument("--kind", choices=("auto", "chat", "preference"), default="auto",
                   help="the file's format (auto: told by its first readable line)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="target model (token encoding, limit, price)")
    p.add_argument("--epochs", type=int, help="epochs for the estimate (default: OpenAI's heuristic)")
    p.add_argument("--price-per-million", type=float, help="USD per 1M training tokens (default: list price)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)
