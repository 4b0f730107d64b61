"""Runs launched in the background: the control API's ``POST /training/run`` and ``flywheel retrain``
create a run of a code-location job in the project's Dagster instance (DAGSTER_HOME, as `flywheel
refresh` records its runs) and execute it in a child process, so the caller gets the run id at once
and the run shows in the Dagster UI like any other, with its steps, logs and materializations.

The run is created ``NOT_STARTED`` with the job's snapshot and its Python origin (the code location
``flywheel_pipeline.definitions``), tagged with the caller's process and then the child's (host, pid,
start time: flywheel_pipeline/run_guard.py marks it failed if that process dies). The child,
``python -m flywheel_pipeline.launcher RUN_ID``, frees what dead runs hold, waits for the
``duckdb_warehouse`` pool as `flywheel refresh` does and executes the run (Dagster's ``execute_run``);
its output goes to ``$FLYWHEEL_HOME/logs/flywheel.log``. The daemon's queued run coordinator never
takes it (it dequeues ``QUEUED`` runs only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from flywheel_pipeline import paths

CODE_LOCATION_MODULE = "flywheel_pipeline.definitions"
CODE_LOCATION_ATTRIBUTE = "defs"
LAUNCHED_TAG = "flywheel/launched_by"  # who asked: 'admin:<key id>' or 'cli:<user>@<host>'
UNFINISHED = ("NOT_STARTED", "QUEUED", "STARTING", "STARTED", "CANCELING")


def _reconstructable(job_name: str):
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    return ReconstructableRepository.for_module(CODE_LOCATION_MODULE, CODE_LOCATION_ATTRIBUTE,
                                                working_directory=os.getcwd()).get_reconstructable_job(job_name)


def unfinished_runs(instance, job_name: str) -> list:
    """The job's runs that have not finished (after runs whose process died were marked failed)."""
    import dagster as dg

    from flywheel_pipeline.run_guard import reap_dead_runs

    reap_dead_runs(instance, lambda line: None)
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job_name,
                                                        statuses=[dg.DagsterRunStatus(s) for s in UNFINISHED])))


def prepare(job_name: str) -> tuple:
    """The job's definition and Python origin (loading the code location takes seconds: do it before
    holding any lock)."""
    from flywheel_pipeline.definitions import build_definitions

    defs = build_definitions()  # bound to this process's settings now, not at first import
    return defs.resolve_job_def(job_name), _reconstructable(job_name).get_python_origin()


def create_run(instance, job: tuple, *, tags: dict[str, str], run_config: dict | None = None):
    """A ``NOT_STARTED`` run of the job (as :func:`prepare` gives it) in ``instance``, tagged with this
    process (a run whose launcher dies before its child starts is reaped like any other)."""
    from flywheel_pipeline.run_guard import process_tags

    job_def, origin = job
    return instance.create_run_for_job(job_def=job_def, run_config=run_config or {},
                                       tags={**(job_def.tags or {}), **tags, **process_tags()},
                                       job_code_origin=origin)


def start(instance, run_id: str) -> int:
    """Execute the run in a child process (its own session: it outlives a request and a Ctrl-C of
    the caller); returns its pid. The child is waited for by a thread, so it leaves no zombie."""
    from flywheel_pipeline.cli.output import log_file
    from flywheel_pipeline.run_guard import process_tags

    log = log_file()
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        child = subprocess.Popen([sys.executable, "-m", "flywheel_pipeline.launcher", run_id],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env={**os.environ, "DAGSTER_HOME": str(paths.dagster_home())},
                                 start_new_session=True)
    threading.Thread(target=child.wait, name=f"run-{run_id[:8]}", daemon=True).start()
    instance.add_run_tags(run_id, process_tags(child.pid))
    return child.pid


def execute(run_id: str) -> bool:
    """The child's work: execute the created run in this process; True when it succeeded."""
    import dagster as dg
    from dagster._core.execution.api import execute_run

    from flywheel_pipeline.defs.resources import WAREHOUSE_POOL
    from flywheel_pipeline.instance import ensure_local_dagster_home
    from flywheel_pipeline.run_guard import process_tags, reap_dead_runs, wait_for_pool

    ensure_local_dagster_home()

    def say(line: str) -> None:
        print(line, flush=True)

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None:
            say(f"no run {run_id} in {paths.dagster_home()}")
            return False
        instance.add_run_tags(run_id, process_tags())
        reap_dead_runs(instance, say)
        wait_for_pool(instance, WAREHOUSE_POOL, say)
        result = execute_run(_reconstructable(run.job_name), instance.get_run_by_id(run_id), instance)
        say(f"Dagster run {run_id} of job {run.job_name} ({'succeeded' if result.success else 'FAILED'})")
        return result.success


if __name__ == "__main__":
    os.umask(0o077)  # as the `flywheel` command: what the flywheel writes is readable by its owner only
    sys.exit(0 if execute(sys.argv[1]) else 1)
