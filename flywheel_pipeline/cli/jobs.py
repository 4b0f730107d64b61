"""``flywheel refresh``, ``flywheel datasets`` and ``flywheel learn``, and running the code location's jobs in this
process (recorded in the instance at DAGSTER_HOME), which the demo does too."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from flywheel_pipeline.cli.options import add_parser, add_verbose, as_of_time, non_negative_int
from flywheel_pipeline.cli.output import library_output, log_file, say, short_metadata


@dataclass
class JobRun:
    """What the story needs from a finished run: did it succeed, and its assets' metadata."""

    job_name: str
    run_id: str
    success: bool
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)  # asset key -> {key: raw value}
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # op (step) -> its output's {key: raw value}

    def __bool__(self) -> bool:
        return self.success


def run_job(job_name: str, run_config: dict | None = None, *, verbose: bool = False,
            name_home: bool = True, log_level: str = "INFO", tags: dict[str, str] | None = None) -> JobRun:
    """Execute one of the code location's jobs in process, recorded in DAGSTER_HOME's instance.
    Prints one line for the run (with ``name_home``, where it is recorded), each failed step and
    each check that did not pass; Dagster's own log lines go to the log file unless ``verbose``."""
    from flywheel_pipeline import paths
    from flywheel_pipeline.instance import ensure_local_dagster_home
    from flywheel_pipeline.warehouse.schema import open_configured

    if not paths.warehouse_is_file():
        # a catalog that cannot be reached is one line before any run starts (WarehouseUnreachable)
        open_configured(read_only=False).close()
    home = ensure_local_dagster_home()
    with library_output(f"job {job_name}", verbose=verbose):
        import dagster as dg

        from flywheel_pipeline.definitions import build_definitions
        defs = build_definitions()  # bound to this process's settings now, not at first import
        from flywheel_pipeline.defs.resources import WAREHOUSE_POOL
        from flywheel_pipeline.run_guard import process_tags, reap_dead_runs, wait_for_pool

        run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": log_level}}}}
        with dg.DagsterInstance.get() as instance:
            # a run whose process was killed keeps its pool slot: free it before waiting for one
            reap_dead_runs(instance, say)
            wait_for_pool(instance, WAREHOUSE_POOL, say)
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, run_config=run_config, raise_on_error=False,
                tags={"flywheel/trigger": "cli", **(tags or {}), **process_tags()})
            run = JobRun(job_name, result.run_id, result.success, {
                event.asset_key.to_user_string(): {k: getattr(v, "value", v)
                                                   for k, v in event.materialization.metadata.items()}
                for event in result.get_asset_materialization_events()},
                {event.step_key: {k: getattr(v, "value", v) for k, v in event.step_output_data.metadata.items()}
                 for event in result.all_events if event.is_successful_output})
            where = f", recorded in DAGSTER_HOME={home}" if name_home else ""
            say(f"Dagster run {result.run_id} of job {job_name} ({'succeeded' if result.success else 'FAILED'}){where}")
            if not result.success:
                for event in result.all_events:
                    if event.is_failure and event.step_key:
                        say(f"  step {event.step_key} failed: {event.message}")
            for check in result.get_asset_check_evaluations():
                if not check.passed:  # why: the check's own figures (the UI shows its tables too)
                    say(f"  check {check.check_name} on {check.asset_key.to_user_string()} did not pass "
                        f"({check.severity.value}): {short_metadata(check.metadata)}")
    if not run.success and not verbose:
        say(f"  (Dagster's log of the run: {log_file()})")
    return run


def run_refresh(full: bool = False, as_of: str | None = None, *, verbose: bool = False,
                name_home: bool = True) -> JobRun:
    """Materialize the refresh job through Dagster, recorded in the instance at DAGSTER_HOME. An
    unreachable landing zone (S3 down, a bad bucket) raises LandingUnavailable before the run."""
    from flywheel_pipeline import paths
    from flywheel_pipeline.defs.ingest.automation import REFRESH_JOB_NAME
    from flywheel_pipeline.landing_store import open_store

    open_store(paths.landing_location()).check()

    return run_job(REFRESH_JOB_NAME, {"ops": {"outcome_labels": {"config": {"full_relabel": full, "as_of": as_of}}}},
                   verbose=verbose, name_home=name_home)


def tick_sensor(sensor_name: str, *, verbose: bool = False, announce: str | None = None
                ) -> tuple[object, JobRun | None]:
    """Tick one of the code location's sensors as the daemon would and run what it requests, tagged
    as that sensor's run (its run key and name), so that the daemon, started later on the same
    instance, does not request the same run again. Returns (the tick's result, the run or None)."""
    from flywheel_pipeline.instance import ensure_local_dagster_home

    ensure_local_dagster_home()
    with library_output(f"{sensor_name} tick", verbose=verbose):
        import dagster as dg

        from flywheel_pipeline.definitions import build_definitions
        defs = build_definitions()  # bound to this process's settings now, not at first import

        sensor = defs.resolve_sensor_def(sensor_name)
        with dg.DagsterInstance.get() as instance:
            tick = sensor(dg.build_sensor_context(instance=instance, resources=defs.resources,
                                                  sensor_name=sensor_name))
    if not isinstance(tick, dg.RunRequest):
        return tick, None
    tags = {**tick.tags, "dagster/sensor_name": sensor_name}
    if tick.run_key:
        tags["dagster/run_key"] = tick.run_key
    if announce:
        say(announce)
    return tick, run_job(tick.job_name or sensor.job_name, verbose=verbose, name_home=False, tags=tags)


def tick_experiment_sensor(*, verbose: bool = False) -> JobRun | None:
    """Tick the experiment sensor as the daemon would and run what it requests (None: it skipped,
    and said why)."""
    tick, run = tick_sensor("experiment_sensor", verbose=verbose,
                            announce="experiment sensor requested a run: A/B results, decisions, leaderboard ...")
    if run is None:
        say(f"experiment sensor: {getattr(tick, 'skip_message', tick)}")
        return None
    return run


def _say_log_file(args: argparse.Namespace) -> None:
    if not args.verbose:
        say(f"Dagster's and MLflow's log lines go to {log_file()} (--verbose shows them here)")


def cmd_refresh(args: argparse.Namespace) -> int:
    _say_log_file(args)
    return 0 if run_refresh(full=args.full, as_of=args.as_of, verbose=args.verbose) else 1


def cmd_datasets(args: argparse.Namespace) -> int:
    from flywheel_pipeline.defs.datasets.automation import DATASETS_JOB_NAME

    if args.snapshot is not None:
        return rebuild_exports(args.snapshot, include_trl=args.include_trl)
    _say_log_file(args)
    return 0 if run_job(DATASETS_JOB_NAME, verbose=args.verbose) else 1


def rebuild_exports(snapshot: int, *, include_trl: bool = False) -> int:
    """Write the SFT and DPO exports again from the warehouse as of a DuckLake snapshot (the one
    an export's manifest records): the same bytes, so the same dataset version."""
    import sys

    from flywheel_pipeline import paths
    from flywheel_pipeline.warehouse.datasets import EXPORT_SETS, export_jsonl
    from flywheel_pipeline.warehouse.schema import open_configured

    try:
        con = open_configured(read_only=True, snapshot=snapshot)
    except ValueError as exc:
        print(f"flywheel datasets: {exc}", file=sys.stderr)
        return 2
    try:
        for fmt, trl in EXPORT_SETS.items():
            result = export_jsonl(con, paths.exports_dir(), [fmt] + ([trl] if include_trl else []))
            say(f"{fmt} export {result.version} from snapshot {snapshot}: {sum(result.rows.values())} rows "
                f"({'the same files were there already' if result.reused else 'written'}) in {result.directory}")
    finally:
        con.close()
    return 0


def run_learn(*, verbose: bool = False, name_home: bool = True) -> JobRun:
    """Materialize the learn job (judgements, drivers, costs) through Dagster."""
    from flywheel_pipeline.defs.learn.automation import LEARN_JOB_NAME

    return run_job(LEARN_JOB_NAME, verbose=verbose, name_home=name_home)


def say_learning(run: JobRun) -> None:
    """What a learn run measured, in a few lines."""
    judged = run.metadata.get("message_judgements") or {}
    if judged:
        say(f"  judged {judged.get('judged_now', 0)} messages now ({judged.get('reused_now', 0)} identical texts "
            f"copied); {judged.get('dagster/row_count', 0)} judgements in all")
    llm = run.metadata.get("message_llm_judgements") or {}
    if llm.get("enabled"):
        say(f"  LLM judge {llm.get('model')}: judged {llm.get('judged_now', 0)} contents now "
            f"({llm.get('reused_now', 0)} copied, {llm.get('unjudged_now', 0)} unjudged); spent {llm.get('spent_usd')} "
            f"of {llm.get('budget_usd')} USD; {llm.get('left_for_next_run', 0)} messages left for the next run")
    costs = run.metadata.get("cost_analysis") or {}
    if costs:
        say(f"  cost: {costs.get('messages', 0)} messages, {costs.get('cost_usd')} USD; possible savings on the "
            f"cheapest model not worse: {costs.get('savings_usd')} USD ({costs.get('unpriced_messages', 0)} "
            "messages without a price)")
    calibration = run.metadata.get("judge_calibration") or {}
    if calibration.get("trusted_rows") is not None:
        say(f"  judge calibration: {calibration['trusted_rows']} of {calibration.get('dagster/row_count', 0)} "
            "(judge, task type, outcome) rows trusted; only a trusted judge decides the offline gate")
    drivers = run.metadata.get("outcome_drivers") or {}
    if drivers.get("significant") is not None:
        say(f"  outcome drivers: {drivers.get('significant')} significant of {drivers.get('tested')} tested "
            "(stratified by organization and task type, Benjamini-Hochberg)")


def cmd_learn(args: argparse.Namespace) -> int:
    _say_log_file(args)
    if args.as_of:  # maturity is the labels' business: relabel as of that time first
        if not run_refresh(as_of=args.as_of, verbose=args.verbose):
            return 1
    run = run_learn(verbose=args.verbose)
    say_learning(run)
    if args.as_of:  # the learn tables stay as of that time; the labels go back to now for everything else
        say("labels back to now (maturity measured against the current time) ...")
        if not run_refresh(verbose=args.verbose, name_home=False):
            return 1
    return 0 if run else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "refresh", help="ingest the landing zone and refresh labels through Dagster")
    p.add_argument("--full", action="store_true", help="rebuild all labels from all events")
    p.add_argument("--as-of", type=as_of_time, help="ISO 8601 time maturity is measured against (default: now)")
    add_verbose(p)
    p.set_defaults(func=cmd_refresh)
    p = add_parser(sub, "datasets", help="build training examples, preference pairs and exports through Dagster")
    p.add_argument("--snapshot", type=non_negative_int, metavar="N",
                   help="instead, write the exports again from DuckLake snapshot N (an export's manifest names "
                        "it): byte-identical files (ducklake backend only; default: build from the current warehouse)")
    p.add_argument("--include-trl", action="store_true", help="with --snapshot: also the TRL formats")
    add_verbose(p)
    p.set_defaults(func=cmd_datasets)
    p = add_parser(sub, "learn", help="judge sent messages, find what drives outcomes and the cost per outcome "
                                      "(the learn job) through Dagster")
    p.add_argument("--as-of", type=as_of_time, help="refresh the labels as of this ISO 8601 time first, so "
                                                     "maturity is measured against it, and back to now after "
                                                     "(default: the labels as they are)")
    add_verbose(p)
    p.set_defaults(func=cmd_learn)
