"""``flywheel retrain``, ``status``, ``deploy``, ``promote`` and ``rollback``: the control API's actions
(flywheel_pipeline/control.py, the same calls as ``/training/*``) from the command line, audited as
``cli:<user>@<host>``. A refusal is one line on stderr and exit 2 (a failed run: exit 1)."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import time

from flywheel_pipeline.cli.options import add_parser
from flywheel_pipeline.cli.output import complain, say

WAIT_POLL_S = 2.0


def _actor():
    from flywheel_pipeline.core.control import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}@{socket.gethostname()}", "cli")


def _refusal(command: str, exc) -> int:
    complain(command, f"{exc.kind.replace('_', ' ')}: {exc.detail}")
    return 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _say_run(status: dict) -> None:
    say(f"run {status['run_id']} of job {status['job_name']}: {status['status']} (started {status['start'] or '-'}, "
        f"ended {status['end'] or '-'})")
    for step in status["steps"]:
        say(f"  {step['step']}: {step['status']}" + (f" - {step['error']}" if step.get("error") else ""))
    if status["model"]:
        m = status["model"]
        say(f"  model: {m['model_id']} ({m['family']} {m['version']})")


def cmd_retrain(args: argparse.Namespace) -> int:
    from flywheel_pipeline import control

    try:
        outcome = control.retrain(_actor())
    except control.ControlRefused as exc:
        return _refusal("retrain", exc)
    run_id = outcome.run_id
    say(f"Dagster run {run_id} of job retrain launched in the background, recorded in "
        f"DAGSTER_HOME={outcome.answer['dagster_home']} (flywheel status {run_id})")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        status = control.run_status(run_id)
        if status["finished"]:
            _say_run(status)
            return 0 if status["success"] else 1
        if time.monotonic() > deadline:
            complain("retrain", f"run {run_id} still {status['status']} after {args.timeout:g}s; it goes on in the "
                                "background (flywheel status RUN_ID)")
            return 1
        time.sleep(WAIT_POLL_S)


def cmd_status(args: argparse.Namespace) -> int:
    from flywheel_pipeline import control

    try:
        result = control.run_status(args.run_id) if args.run_id else control.stats()
    except control.ControlRefused as exc:
        return _refusal("status", exc)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.run_id:
        _say_run(result)
    else:
        _say_stats(result)
    return 0


def _say_stats(stats: dict) -> None:
    roles = ", ".join(f"{n} {role}" for role, n in sorted(stats["models"].items())) or "none"
    say(f"models: {roles}")
    for f in stats["families"]:
        challenger = (f"challenger {f['challenger']} ({f['challenger_version']}) at {f['challenger_traffic_pct']:g}%"
                      if f["challenger"] else "no challenger")
        say(f"{f['family']}: champion {f['champion'] or '(the default model)'}"
            f"{' (' + f['champion_version'] + ')' if f['champion_version'] else ''}; {challenger}")
        if f["verdict"]:
            v = f["verdict"]
            say(f"  latest verdict ({v['evaluated_at']}, {v['step']} step): {v['decision']} - {v['reason']}")
    for run in stats["retrain_runs"]:
        say(f"retrain run {run['run_id']}: {run['status']} (started {run['start'] or '-'}"
            f"{', by ' + run['launched_by'] if run['launched_by'] else ''})")
    for a in stats["recent_actions"]:
        say(f"{a['acted_at']} {a['actor']} {a['action']} {json.dumps(a['parameters'])}: {a['result']} - {a['detail']}")


def _say_change(answer: dict) -> None:
    say(f"{answer['action']}: {answer['model_id']} ({answer['family']} {answer['version']})")
    if answer.get("statistics"):
        say(f"  statistics: {answer['statistics']}")
    if answer.get("replaced"):
        say(f"  replaced champion {answer['replaced']} (retired; `flywheel rollback` can bring it back)")
    arms = ", ".join(f"{a['ab_group']} {a['model_id']} {a['traffic_pct']:g}%" for a in answer.get("arms", []))
    say(f"  routing: {arms} (experiment {answer.get('experiment_id')})")
    if answer.get("mlflow"):
        say(f"  MLflow: {answer['mlflow']}")


def cmd_deploy(args: argparse.Namespace) -> int:
    from flywheel_pipeline import control

    try:
        _say_change(control.deploy(_actor(), args.version, args.share, args.family).answer)
    except control.ControlRefused as exc:
        return _refusal("deploy", exc)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from flywheel_pipeline import control

    try:
        _say_change(control.promote_winner(_actor(), args.family, force=args.force, reason=args.reason).answer)
    except control.ControlRefused as exc:
        return _refusal("promote", exc)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from flywheel_pipeline import control

    try:
        _say_change(control.rollback(_actor(), args.version, args.family).answer)
    except control.ControlRefused as exc:
        return _refusal("rollback", exc)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "retrain", help="launch the retrain job as a Dagster run in the background (audited); "
                                        "refused while one runs")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish and print its steps")
    p.add_argument("--timeout", type=_positive_float, default=7200.0, help="with --wait: stop waiting after this "
                                                                           "many seconds (the run goes on)")
    p.set_defaults(func=cmd_retrain)
    p = add_parser(sub, "status", help="a Dagster run's status, steps and the model it produced; without RUN_ID "
                                       "the control overview (models, experiments, retrain runs, actions)")
    p.add_argument("run_id", nargs="?", help="the run (as `flywheel retrain` or POST /training/run answered)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON (as GET /training/status, /stats)")
    p.set_defaults(func=cmd_status)
    p = add_parser(sub, "deploy", help="make a registered version its family's challenger at a traffic share "
                                       "(a new experiment; audited)")
    p.add_argument("version", help="a registry version (e.g. 1.1.0) or a model id")
    p.add_argument("--share", type=float, required=True,
                   help="the challenger's traffic share in percent, in (0, 50] (no default: required)")
    p.add_argument("--family", help="the model family (default: the one family that has the version)")
    p.set_defaults(func=cmd_deploy)
    p = add_parser(sub, "promote", help="promote the challenger the experiment's statistics declare the winner "
                                        "(refused without one; audited)")
    p.add_argument("--family", help="the family (default: the only one running an experiment)")
    p.add_argument("--force", action="store_true", help="promote without a significant winner (needs --reason; "
                                                        "recorded in the audit)")
    p.add_argument("--reason", help="why (no default: required with --force)")
    p.set_defaults(func=cmd_promote)
    p = add_parser(sub, "rollback", help="take a challenger off traffic, or make a former champion champion "
                                         "again (audited)")
    p.add_argument("version", help="a registry version or a model id")
    p.add_argument("--family", help="the model family (default: the one family that has the version)")
    p.set_defaults(func=cmd_rollback)
