"""``flywheel models`` (the model catalog with measured quality and cost) and ``flywheel route``
(a lead's model by a routing strategy): both read the catalog and the published
``model_stats.json`` and ``routing.json``, never the warehouse. Bad input is one line on stderr
and exit 2."""

from __future__ import annotations

import argparse
import json
import sys

from flywheel_pipeline.cli.options import add_parser


def _fail(command: str, message: str) -> int:
    print(f"flywheel {command}: {message}", file=sys.stderr)
    return 2


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def cmd_models(args: argparse.Namespace) -> int:
    from flywheel_pipeline.core.catalog import CatalogError
    from flywheel_pipeline.core.markdown import md_table
    from flywheel_pipeline.core.model_snapshot import catalog_rows
    from flywheel_pipeline.routing import load_model_stats, routing_catalog

    snapshot = load_model_stats()
    try:
        catalog = routing_catalog(snapshot)
    except CatalogError as exc:
        return _fail("models", str(exc))
    rows = catalog_rows(catalog, snapshot, args.organization, args.task_type)
    if args.task_type and not rows:
        return _fail("models", f"no catalog model lists task type {args.task_type!r}")
    if args.json:
        print(json.dumps({"generated_at": snapshot.get("generated_at") or None,
                          "quality_metric": snapshot.get("quality_metric"), "models": rows}, indent=2))
        return 0

    def measured(r: dict, key: str, fmt: str) -> str:
        value = (r["measured"] or {}).get(key)
        return "" if value is None else format(value, fmt)
    print(md_table(["model", "provider", "in $/M", "out $/M", "context", "latency ms", "capabilities",
                    "mature msgs", "quality [low]", "cost/message", "cost/reply"],
                   [(r["model_id"], r["provider"], f"{r['input_per_million']:g}", f"{r['output_per_million']:g}",
                     r["context_window"] or "", r["typical_latency_ms"] or "", ",".join(r["capabilities"]),
                     measured(r, "mature_messages", ","),
                     "" if r["measured"] is None or r["measured"]["quality"] is None else
                     f"{r['measured']['quality']:.4f} [{r['measured']['quality_low']:.4f}]",
                     measured(r, "cost_per_message", ".6f"), measured(r, "cost_per_reply", ".4f")) for r in rows]))
    when = snapshot.get("generated_at")
    print(f"\n{len(rows)} models; measured ({snapshot.get('quality_metric')}) as of {when}" if when else
          f"\n{len(rows)} models; nothing measured yet (run `flywheel learn`)")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from flywheel_pipeline.core.catalog import CatalogError
    from flywheel_pipeline.core.model_choice import ChoiceError, Constraints
    from flywheel_pipeline.routing import choose_model

    try:
        answer = choose_model(args.lead_id, args.organization, args.task_type, strategy=args.strategy,
                              candidates=_split(args.candidates),
                              constraints=Constraints(args.min_quality, args.max_cost_per_message, args.max_latency_ms,
                                                      _split(args.capabilities) or (), args.min_context_window),
                              fallbacks=args.fallbacks)
    except ChoiceError as exc:
        return _fail("route", exc.detail)
    except (LookupError, CatalogError) as exc:
        return _fail("route", str(exc))
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(answer["model_id"])
        for reason in answer["reasons"]:
            print(f"  - {reason}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from flywheel_pipeline.core.model_choice import STRATEGIES

    p = add_parser(sub, "models", help="list the model catalog: provider, prices, context window, latency, "
                                       "capabilities, task types, and measured quality and cost where known")
    p.add_argument("--task-type", help="only the models for this task type, measured on it (default: every model, "
                                       "measured over every task type)")
    p.add_argument("--organization", help="that organization's own measurements when it has them (default: every "
                                          "organization's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = add_parser(sub, "route", help="the model for a lead's next message: a routing strategy over measured "
                                      "outcomes, or the routing table (the experiment arm wins)")
    p.add_argument("--lead-id", required=True, help="the lead the message is for (required; no default)")
    p.add_argument("--organization", required=True, help="the lead's organization (required; no default)")
    p.add_argument("--task-type", default="all", help="the message's task type (default: all)")
    p.add_argument("--strategy", help=f"one of {', '.join(STRATEGIES)} (default: the routing table decides)")
    p.add_argument("--candidates", help="comma-separated model ids (default: the catalog's models for the task)")
    p.add_argument("--min-quality", type=float, help="minimum quality lower bound (default: none)")
    p.add_argument("--max-cost-per-message", type=float, help="maximum cost per message in USD (default: none)")
    p.add_argument("--max-latency-ms", type=float, help="maximum latency in ms (default: none)")
    p.add_argument("--capabilities", help="comma-separated required capabilities (default: none)")
    p.add_argument("--min-context-window", type=int, help="minimum context window in tokens (default: none)")
    p.add_argument("--fallbacks", type=int, default=3, help="length of the fallback chain (default: 3)")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.set_defaults(func=cmd_route)
