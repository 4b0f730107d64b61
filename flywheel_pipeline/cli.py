"""`flywheel` command line: demo, simulate, refresh, datasets, summary, sql, validate, ui, serve."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import date, timedelta

from flywheel_pipeline import paths
from flywheel_pipeline.replies_cli import add_replies_parser


def _print(msg: str = "") -> None:
    print(msg, flush=True)


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


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# The demo trains turn 1 on the days before the experiment; fewer than this leaves no mature
# outcomes to train on (14 days of maturity plus a week of sending).
DEMO_MIN_HISTORY_DAYS = 21


def cmd_simulate(args: argparse.Namespace) -> int:
    from flywheel_pipeline.simulator import SIMULATOR_TAG, SimConfig, routing_history, simulate

    history = routing_history(args.follow_routing_from)
    cfg = SimConfig(seed=args.seed, days=args.days, messages_per_day=args.messages_per_day,
                    leads_per_org=args.leads_per_org, end=args.end, routing_history=history)
    if history:
        _print(f"[{SIMULATOR_TAG}] the simulated outreach app follows the routing tables it saw: "
               + ", ".join(f"from {d}: " + "; ".join(f"{a['ab_group']} {a['traffic_pct']:g}%"
                                                      for f in t["families"].values() for a in f["arms"])
                           for d, t in history))
    _print(f"[{SIMULATOR_TAG}] writing {cfg.days} simulated days (seed {cfg.seed}) to {paths.landing_dir()}")
    result = simulate(paths.landing_dir(), cfg)
    _print(f"[{SIMULATOR_TAG}] {result.days_written} days written, {result.days_skipped} already present: "
           f"{result.messages} messages, {result.sendgrid_lines} SendGrid lines (duplicates included, "
           f"{result.malformed_lines} deliberately truncated), {result.crm_lines} CRM events, "
           f"{result.reply_lines} replies")
    return 0


def run_refresh(full: bool = False, as_of: str | None = None, log_level: str = "INFO") -> bool:
    """Materialize the refresh job through Dagster, recorded in the instance at DAGSTER_HOME."""
    from flywheel_pipeline.defs.ingest.automation import REFRESH_JOB_NAME

    return run_job(REFRESH_JOB_NAME, {"ops": {"outcome_labels": {"config": {"full_relabel": full, "as_of": as_of}}}},
                   log_level)


def run_job(job_name: str, run_config: dict | None = None, log_level: str = "INFO") -> bool:
    """Execute one of the code location's jobs in process, recorded in DAGSTER_HOME's instance."""
    from flywheel_pipeline.instance import ensure_local_dagster_home

    home = ensure_local_dagster_home()
    import dagster as dg

    from flywheel_pipeline.definitions import defs

    from flywheel_pipeline.defs.resources import WAREHOUSE_POOL
    from flywheel_pipeline.run_guard import process_tags, reap_dead_runs, wait_for_pool

    run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
    with dg.DagsterInstance.get() as instance:
        # a run whose process was killed keeps its pool slot: free it before waiting for one
        reap_dead_runs(instance, _print)
        wait_for_pool(instance, WAREHOUSE_POOL, _print)
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False,
            tags={"flywheel/trigger": "cli", **process_tags()})
        _print(f"Dagster run {result.run_id} of job {job_name} ({'succeeded' if result.success else 'FAILED'}), "
               f"recorded in DAGSTER_HOME={home}")
        if not result.success:
            for event in result.all_events:
                if event.is_failure and event.step_key:
                    _print(f"  step {event.step_key} failed: {event.message}")
        for check in result.get_asset_check_evaluations():
            if not check.passed:  # why: the check's own figures (the UI shows its tables too)
                _print(f"  check {check.check_name} on {check.asset_key.to_user_string()} did not pass "
                       f"({check.severity.value}): {_short_metadata(check.metadata)}")
    return result.success


def _short_metadata(metadata: dict) -> str:
    """The scalar entries of a check's metadata, and short JSON ones, on one line."""
    import json

    parts = []
    for key, entry in metadata.items():
        value = getattr(entry, "value", entry)
        if isinstance(value, (bool, int, float, str)) and len(str(value)) <= 200 and "\n" not in str(value):
            parts.append(f"{key}={value}")
        elif isinstance(value, (dict, list)) and value and len(json.dumps(value)) <= 200:
            parts.append(f"{key}={json.dumps(value)}")
    return ", ".join(parts)


def cmd_refresh(args: argparse.Namespace) -> int:
    return 0 if run_refresh(full=args.full, as_of=args.as_of) else 1


def cmd_datasets(args: argparse.Namespace) -> int:
    from flywheel_pipeline.defs.datasets.automation import DATASETS_JOB_NAME

    return 0 if run_job(DATASETS_JOB_NAME) else 1


def cmd_summary(args: argparse.Namespace) -> int:
    from flywheel_pipeline.summary import print_summary

    if not paths.warehouse_path().exists():
        _print(f"no warehouse at {paths.warehouse_path()}: run `flywheel demo` or `flywheel refresh` first")
        return 1
    print_summary(paths.warehouse_path(), out=_print)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one query against the warehouse, opened read-only, and print its result: a table on
    the terminal (``--max-rows``), or every row as CSV with ``--csv`` (streamed in chunks)."""
    import csv

    import duckdb

    from flywheel_pipeline.warehouse.schema import connect

    database = paths.warehouse_path()
    if not database.exists():
        print(f"flywheel sql: no warehouse at {database}: run `flywheel demo` or `flywheel refresh` first",
              file=sys.stderr)
        return 1
    try:
        con = connect(database, read_only=True)
    except duckdb.IOException as exc:
        print(f"flywheel sql: cannot open {database}: {exc}\n(DuckDB allows one writing process: wait for "
              "the Dagster run that holds it to finish)", file=sys.stderr)
        return 1
    try:
        if args.csv:
            result = con.execute(args.query)
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(column[0] for column in result.description)
            while rows := result.fetchmany(10_000):
                writer.writerows(rows)
        else:
            con.sql(args.query).show(max_rows=args.max_rows, max_width=shutil.get_terminal_size((160, 24)).columns)
    except duckdb.Error as exc:
        print(f"flywheel sql: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The flywheel on the simulated world, in simulated time: turn 1 trains on the days up to
    ``experiment_weeks`` ago and routes 10% of traffic to its model; then, week by week, the
    simulated outreach app sends through routing.json, outcomes land and are labelled as of that
    week, and the experiment sensor's run evaluates the experiment and applies its decision
    (rollout, promotion, rollback); turn 2 trains again on everything."""
    import json
    from datetime import datetime, timezone

    from flywheel_pipeline.defs.training.automation import RETRAIN_JOB_NAME
    from flywheel_pipeline.published import write_json_atomic

    _print(f"FLYWHEEL_HOME={paths.flywheel_home()}")
    end = args.end or datetime.now(timezone.utc).date()
    if args.days < DEMO_MIN_HISTORY_DAYS + 7:
        print(f"flywheel demo: --days {args.days} is too short: the demo needs {DEMO_MIN_HISTORY_DAYS} days "
              f"of history to train on and at least one week of live traffic ({DEMO_MIN_HISTORY_DAYS + 7} days)",
              file=sys.stderr)
        return 2
    weeks = min(args.experiment_weeks, (args.days - DEMO_MIN_HISTORY_DAYS) // 7)
    state_path = paths.simulator_dir() / "demo.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is None and weeks < args.experiment_weeks:
        _print(f"--experiment-weeks {args.experiment_weeks} shortened to {weeks}: --days {args.days} leaves "
               f"{DEMO_MIN_HISTORY_DAYS} days of history to train on and {weeks} weeks of live traffic")

    def simulate_until(day: date, follow_from: date | None) -> None:
        cmd_simulate(argparse.Namespace(seed=args.seed, days=args.days - (end - day).days, end=day,
                                        messages_per_day=args.messages_per_day, leads_per_org=args.leads_per_org,
                                        follow_routing_from=follow_from))

    def as_of(day: date) -> str:
        return datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc).isoformat()

    def save(steps_done: int, complete: bool) -> None:
        write_json_atomic({"end": end.isoformat(), "weeks": weeks, "steps_done": steps_done,
                           "complete": complete}, state_path)

    if state is not None and state["complete"]:
        # the demo already ran here: the world only moves forward (simulated time cannot be replayed
        # over a warehouse that has seen the future)
        done = date.fromisoformat(state["end"])
        if done >= end:
            _print(f"The demo world in this FLYWHEEL_HOME already runs up to {done}; nothing to add "
                   "(use a new FLYWHEEL_HOME, or `make clean`, to start over).")
            return cmd_summary(args)
        _print(f"\n=== the demo world moves on: {done} -> {end} ===")
        simulate_until(end, done)
        if not run_refresh(as_of=as_of(end)) or not _evaluate_experiments() or not run_job(RETRAIN_JOB_NAME):
            return 1
        save(state["steps_done"], True)
        return cmd_summary(args)
    steps_done = 0
    if state is not None:  # an interrupted demo resumes where it stopped, on its own dates
        end, weeks, steps_done = date.fromisoformat(state["end"]), int(state["weeks"]), int(state["steps_done"])
        _print(f"Resuming the demo that stopped after step {steps_done} of {weeks + 2} (world up to {end}).")
    start_experiment = end - timedelta(days=7 * weeks)

    def turn_1() -> bool:
        _print(f"\n=== flywheel turn 1: outcomes up to {start_experiment} ===")
        simulate_until(start_experiment, None)
        _print("Materializing ingestion and outcome labels through Dagster ...")
        if not run_refresh(as_of=as_of(start_experiment)):
            return False
        _print("Training data, validated exports, fine-tuning (sandbox backend), registry, MLflow, routing ...")
        return run_job(RETRAIN_JOB_NAME)

    def live_week(week: int) -> bool:
        week_end = start_experiment + timedelta(days=7 * week)
        _print(f"\n=== live traffic, week {week} of {weeks}: up to {week_end} ===")
        simulate_until(week_end, week_end - timedelta(days=7))
        return run_refresh(as_of=as_of(week_end)) and _evaluate_experiments()

    def turn_2() -> bool:
        _print(f"\n=== flywheel turn 2: outcomes up to {end} ===")
        _print("Training again on everything that matured: a new dataset version, a new model version ...")
        return run_job(RETRAIN_JOB_NAME)

    steps = [turn_1, *(lambda w=w: live_week(w) for w in range(1, weeks + 1)), turn_2]
    for number, step in enumerate(steps, 1):
        if number <= steps_done:
            continue
        if not step():
            return 1
        save(number, number == len(steps))
    cmd_summary(args)
    _print()
    bin_dir = os.path.dirname(sys.executable)  # this environment's commands, activated or not
    _print("Next: open the Dagster UI on this instance with")
    _print(f"  FLYWHEEL_HOME={paths.flywheel_home()} {os.path.join(bin_dir, 'flywheel')} ui")
    _print("  (or `make ui`), then browse Assets for metadata and checks; and the MLflow UI with")
    mlflow_db = paths.mlflow_db_path()
    _print(f"  {os.path.join(bin_dir, 'mlflow')} ui --backend-store-uri sqlite:///{mlflow_db}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 for a valid file, 1 for an invalid one, 2 when the file cannot be read."""
    import json

    from flywheel_pipeline.core.finetune_format import validate_file

    try:
        report = validate_file(args.file, kind=args.kind, model=args.model, epochs=args.epochs,
                               price_per_million=args.price_per_million)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"flywheel validate: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    _print(json.dumps(report.as_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def _evaluate_experiments() -> bool:
    """Tick the experiment sensor as the daemon would and run what it requests."""
    import dagster as dg

    from flywheel_pipeline.defs.experiments.automation import EXPERIMENTS_JOB_NAME, experiment_sensor
    from flywheel_pipeline.instance import ensure_local_dagster_home

    ensure_local_dagster_home()
    with dg.DagsterInstance.get() as instance:
        tick = experiment_sensor(dg.build_sensor_context(instance=instance))
    if not isinstance(tick, dg.RunRequest):
        _print(f"experiment sensor: {getattr(tick, 'skip_message', tick)}")
        return True
    _print("experiment sensor requested a run: A/B results, decisions, leaderboard ...")
    if not run_job(EXPERIMENTS_JOB_NAME):
        return False
    from flywheel_pipeline.warehouse.schema import connect

    con = connect(paths.warehouse_path(), read_only=True)
    try:
        for family, challenger, step, leads_c, leads_p, decision, reason in con.execute("""
                SELECT family, challenger, step, challenger_leads, champion_leads, decision, reason
                FROM ab_test_results
                QUALIFY rank() OVER (PARTITION BY family ORDER BY evaluated_at DESC) = 1
                    AND row_number() OVER (PARTITION BY family, arm, evaluated_at) = 1
                ORDER BY family, arm""").fetchall():
            _print(f"  {family}: challenger {challenger}, {step} step ({leads_c} mature leads vs {leads_p}): "
                   f"{decision.upper()} - {reason}")
        for model, version, status, pct in con.execute(
                "SELECT model_id, version, status, traffic_pct FROM model_registry "
                "WHERE status IN ('ready', 'deployed', 'archived') ORDER BY created_at").fetchall():
            _print(f"  registry: {model} v{version}: {status}, {pct:g}% of traffic")
    finally:
        con.close()
    return True


def cmd_ui(args: argparse.Namespace) -> int:
    from flywheel_pipeline.instance import ensure_local_dagster_home

    ensure_local_dagster_home()
    # the dagster of this environment (the one that can import flywheel_pipeline), not whichever
    # comes first on PATH
    beside = os.path.join(os.path.dirname(sys.executable), "dagster")
    dagster = beside if os.access(beside, os.X_OK) else shutil.which("dagster")
    if dagster is None:
        print("flywheel ui: no `dagster` command in this environment (pip install dagster-webserver)", file=sys.stderr)
        return 1
    argv = [dagster, "dev", "-m", "flywheel_pipeline.definitions", "--host", args.host, "--port", str(args.port)]
    _print("exec " + " ".join(argv))
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


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
    from flywheel_pipeline.service.server import serve
    from flywheel_pipeline.service.settings import ServiceSettings

    try:
        settings = ServiceSettings.from_env()
    except ValueError as exc:
        print(f"flywheel serve: bad configuration: {exc}", file=sys.stderr)
        return 2
    refusal = bind_refusal(args.host, settings, allow_unauthenticated=args.allow_unauthenticated)
    if refusal:
        print(f"flywheel serve: {refusal}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _print(f"flywheel serve: landing zone {settings.landing}, http://{args.host}:{args.port}")
    try:
        serve(create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level.lower())
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully (segments sealed), then re-raised the signal
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def sim_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=int, default=7)
        p.add_argument("--days", type=positive_int, default=90, help="simulated days ending yesterday (default 90)")
        p.add_argument("--messages-per-day", type=positive_int, default=500)
        p.add_argument("--leads-per-org", type=positive_int, default=3000,
                       help="leads per simulated organization (3)")
        p.add_argument("--end", type=iso_date, help="first day NOT simulated (ISO date; default today, UTC)")

    p = sub.add_parser("demo", help="turn the flywheel on a simulated world: train, A/B test week by week, train again")
    sim_args(p)
    p.add_argument("--experiment-weeks", type=positive_int, default=8,
                   help="simulated weeks of live A/B traffic between the two training turns (default 8)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("simulate", help="write the demo-world simulator's landing files")
    sim_args(p)
    p.add_argument("--follow-routing-from", type=iso_date,
                   help="ISO date: from that day the simulated outreach app sends through $FLYWHEEL_HOME/routing.json")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("refresh", help="ingest the landing zone and refresh labels through Dagster")
    p.add_argument("--full", action="store_true", help="rebuild all labels from all events")
    p.add_argument("--as-of", type=as_of_time, help="ISO 8601 time maturity is measured against (default now)")
    p.set_defaults(func=cmd_refresh)
    p = sub.add_parser("datasets", help="build training examples, preference pairs and exports through Dagster")
    p.set_defaults(func=cmd_datasets)
    p = sub.add_parser("summary", help="print what the warehouse holds")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("sql", help="query the warehouse read-only, e.g. "
                       "flywheel sql 'SELECT stage, count(*) FROM outcome_labels GROUP BY 1'")
    p.add_argument("query", help="one SQL query (DuckDB dialect); the warehouse is opened read-only")
    p.add_argument("--csv", action="store_true", help="print every row as CSV (header first) instead of a table")
    p.add_argument("--max-rows", type=positive_int, default=40, help="rows shown in the table (default 40)")
    p.set_defaults(func=cmd_sql)
    p = sub.add_parser("validate", help="validate a chat (SFT) or preference (DPO) fine-tuning JSONL file")
    p.add_argument("file")
    p.add_argument("--kind", choices=("auto", "chat", "preference"), default="auto")
    p.add_argument("--model", default="gpt-4o-mini-2024-07-18", help="target model (token encoding, limit, price)")
    p.add_argument("--epochs", type=int, help="epochs for the estimate (default: OpenAI's heuristic)")
    p.add_argument("--price-per-million", type=float, help="USD per 1M training tokens (default: list price)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)
    add_replies_parser(sub)
    p = sub.add_parser("ui", help="start `dagster dev` on the local instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)
    p = sub.add_parser("serve", help="run the ingestion service (webhooks and records into the landing zone)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="listen beyond loopback although some enabled route accepts unauthenticated requests")
    p.set_defaults(func=cmd_serve)
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
