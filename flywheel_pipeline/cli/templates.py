"""``flywheel templates add|list|show|propose``: versioned prompt templates (core/templates.py,
warehouse/templates.py) and the prompt optimizer (defs/experiments/templates.py).

``add FILE --name N --version X.Y.Z [--task-type T] [--challenger]`` stores a template (refused, with
the reason on one line and exit 2: a field a lead does not have, a syntax error, a name or version
that is not valid, a version already stored or not above the latest); the task type's first template
becomes its champion, a later one a draft or, with ``--challenger``, the challenger at the first
rollout step. ``list [--json]``, ``show NAME [--version X.Y.Z]``. ``propose`` runs the
``propose_templates`` job through Dagster: outcome_drivers, then the optimizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flywheel_pipeline import paths
from flywheel_pipeline.cli.options import add_parser, add_verbose
from flywheel_pipeline.cli.output import say
from flywheel_pipeline.core.assignment import DEFAULT_ROLLOUT_STEPS


def _connect(read_only: bool = False):
    from flywheel_pipeline.defs.resources import configured_warehouse

    return configured_warehouse().connect(read_only=read_only)


def _fail(command: str, message: str, status: int = 2) -> int:
    print(f"flywheel templates {command}: {message}", file=sys.stderr)
    return status


def cmd_add(args: argparse.Namespace) -> int:
    from flywheel_pipeline.core.templates import TemplateRefused
    from flywheel_pipeline.routing import write_template_families
    from flywheel_pipeline.warehouse import templates
    from flywheel_pipeline.warehouse.template_routing import build_template_families

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _fail("add", f"cannot read {args.file}: {exc}")
    try:
        with _connect() as con:
            added = templates.add_template(con, template_id=args.name, version=args.version, text=text,
                                           task_type=args.task_type,
                                           as_challenger_pct=DEFAULT_ROLLOUT_STEPS[0] if args.challenger else None)
            families, _ = build_template_families(con)
    except TemplateRefused as exc:
        return _fail("add", f"refused: {exc}")
    write_template_families(families)
    say(f"added {added.template.key} for task type {added.template.task_type} (fields: "
        f"{', '.join(added.template.fields) or 'none'}): {added.deployment}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from flywheel_pipeline.warehouse import templates

    if not paths.warehouse_exists():
        return _fail("list", f"no warehouse at {paths.warehouse_path()}", 1)
    with _connect(read_only=True) as con:
        rows = templates.list_templates(con)
    if args.json:
        print(json.dumps([{"template_id": t.template_id, "version": t.version, "task_type": t.task_type,
                           "status": t.status, "ab_group": t.ab_group, "traffic_pct": t.traffic_pct,
                           "source": t.source, "parent_version": t.parent_version, "fields": t.fields,
                           "created_at": str(t.created_at)} for t in rows], indent=2))
        return 0
    if not rows:
        say("no templates (add one with `flywheel templates add FILE --name NAME --version 1.0.0`)")
    for t in rows:
        say(f"{t.template_id:<24} {t.version:<9} {t.task_type:<12} {t.status or '':<9} {t.ab_group or '':<13} "
            f"{t.traffic_pct:5g}%  {t.source}{f' from {t.parent_version}' if t.parent_version else ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from flywheel_pipeline.warehouse import templates

    if not paths.warehouse_exists():
        return _fail("show", f"no warehouse at {paths.warehouse_path()}", 1)
    with _connect(read_only=True) as con:
        try:
            t = templates.get(con, args.name, args.version)
        except KeyError as exc:
            return _fail("show", str(exc.args[0]), 1)
    for key, value in (("template", t.key), ("task type", t.task_type), ("status", t.status),
                       ("arm", f"{t.ab_group or '-'} at {t.traffic_pct:g}%"), ("source", t.source),
                       ("parent version", t.parent_version or "-"), ("fields", ", ".join(t.fields) or "-"),
                       ("sha256", t.content_sha256), ("created at", t.created_at),
                       ("rationale", t.rationale or "-")):
        say(f"{key + ':':<16}{value}")
    say("")
    sys.stdout.write(t.text if t.text.endswith("\n") else t.text + "\n")
    return 0


def cmd_propose(args: argparse.Namespace) -> int:
    from flywheel_pipeline.cli.jobs import run_job
    from flywheel_pipeline.defs.experiments.templates import PROPOSE_JOB_NAME

    config = {"task_type": args.task_type, "first_step_pct": DEFAULT_ROLLOUT_STEPS[0],
              "rewrite_model": args.rewrite_model}
    run = run_job(PROPOSE_JOB_NAME, {"ops": {"prompt_optimizer": {"config": config}}}, verbose=args.verbose)
    say_proposal(run.metadata.get("prompt_optimizer") or {})
    return 0 if run else 1


def say_proposal(meta: dict) -> None:
    if meta.get("proposed"):
        say(f"  prompt optimizer: proposed {meta['template']} from champion {meta['champion']} ({meta['method']}): "
            f"{meta['deployment']}; body {meta['word_range']} words {meta['rationale']}")
    elif meta:
        say(f"  prompt optimizer: nothing proposed: {meta.get('reason')}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "templates", help="versioned prompt templates: add, list, show, propose")
    tsub = p.add_subparsers(dest="templates_command", required=True)
    a = add_parser(tsub, "add", help="store a Jinja2 template from a file as NAME at VERSION (refused if it does "
                                     "not render with the lead's fields)")
    a.add_argument("file", help="the template's text (UTF-8), Jinja2 using only the lead's fields")
    a.add_argument("--name", required=True, help="the template's name (lower-case letters, digits, _ - .); required, no default")
    a.add_argument("--version", required=True, help="its semantic version, MAJOR.MINOR.PATCH, above the latest; required, no default")
    a.add_argument("--task-type", default="all", help="the task type it writes for ('all': every one)")
    a.add_argument("--challenger", action="store_true",
                   help="start it as its task type's challenger at the first rollout step (else a draft; the "
                        "first template of a task type is its champion)")
    a.set_defaults(func=cmd_add)
    lst = add_parser(tsub, "list", help="every template version with its status and traffic")
    lst.add_argument("--json", action="store_true", help="as JSON")
    lst.set_defaults(func=cmd_list)
    s = add_parser(tsub, "show", help="a template's text and metadata")
    s.add_argument("name", help="the template's name")
    s.add_argument("--version", help="the version to show (default: the latest)")
    s.set_defaults(func=cmd_show)
    o = add_parser(tsub, "propose", help="refresh outcome_drivers and propose the champion's next version from "
                                         "their guidance, deployed only as a challenger (through Dagster)")
    o.add_argument("--task-type", default="all", help="whose champion template to improve")
    o.add_argument("--rewrite-model", help="also have this model rewrite it (generation resource in mode "
                                           "'openai'; default: the deterministic text only)")
    add_verbose(o)
    o.set_defaults(func=cmd_propose)
