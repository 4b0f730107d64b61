"""Runs whose process died never block the flywheel.

The ``flywheel`` command executes jobs in its own process (``execute_in_process``). A process
killed with SIGKILL (or by the OOM killer, or a power cut) leaves its run ``STARTED`` in the
Dagster instance, holding its slot of the ``duckdb_warehouse`` pool (limit 1), and Dagster's
in-process executor then waits for that slot forever, with interrupts captured. So before a
job starts, :func:`reap_dead_runs` finds the runs this host's ``flywheel`` processes started
(tagged with host, pid and the process's start time, so a reused pid is not mistaken for the
old process) whose process is gone, marks them failed, frees their concurrency slots and
says so in one line each; slots still held by finished runs are freed too. Then
:func:`wait_for_pool` waits, interruptibly, while a live run holds the pool.

Runs launched by the Dagster daemon or webserver are watched by Dagster's run monitoring
(on in both instance configs: the local one written by ``instance.py`` and the production
``dagster.yaml``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from flywheel_pipeline.core.processes import pid_exists

HOST_TAG = "flywheel/host"
PID_TAG = "flywheel/pid"
START_TAG = "flywheel/process_start"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``); None elsewhere or when
    there is no such process. A zombie counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def process_tags(pid: int | None = None) -> dict[str, str]:
    """Tags that let a later ``flywheel`` process tell whether this one (or its child ``pid``, which
    executes the run: flywheel_pipeline/launcher.py) is still alive."""
    pid = os.getpid() if pid is None else pid
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), START_TAG: _process_start(pid) or ""}


def process_alive(pid: int, started: str) -> bool:
    if os.path.isdir("/proc/self"):
        current = _process_start(pid)
        return current is not None and (not started or not current or current == started)
    return pid_exists(pid)


def _is_dead(run) -> bool:
    tags = run.tags
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False  # not ours to judge: Dagster's run monitoring watches it
    pid = int(tags[PID_TAG])
    return pid != os.getpid() and not process_alive(pid, tags.get(START_TAG, ""))


def reap_dead_runs(instance, say: Callable[[str], None]) -> list[str]:
    """Mark failed the unfinished runs whose ``flywheel`` process is gone and free the concurrency
    slots of every finished run that still holds some; returns the run ids marked failed."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                  DagsterRunStatus.CANCELING]
    reaped = []
    for run in instance.get_runs(filters=RunsFilter(statuses=unfinished, tags={HOST_TAG: socket.gethostname()})):
        if not _is_dead(run):
            continue
        pid = run.tags[PID_TAG]
        instance.report_run_failed(run, message=f"the process of this run (pid {pid}) is gone: it was killed "
                                                "or crashed; marked failed by flywheel")
        _free_slots(instance, run.run_id)
        say(f"run {run.run_id} of job {run.job_name} died with its process (pid {pid}): marked failed, "
            "its concurrency slots freed")
        reaped.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holders = set(storage.get_concurrency_run_ids())
        for key in storage.get_concurrency_keys():
            holders |= storage.get_concurrency_info(key).active_run_ids
        for run_id in sorted(holders - set(reaped)):
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                _free_slots(instance, run_id)
                say(f"freed the concurrency slots still held by finished run {run_id}")
    return reaped


def _free_slots(instance, run_id: str) -> None:
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def wait_for_pool(instance, pool: str, say: Callable[[str], None], *, poll_s: float = 1.0) -> None:
    """Return once ``pool`` has a free slot. While a live run holds it, say so once and wait
    (in this process's own loop, so Ctrl-C and SIGTERM stop it), reaping runs that die meanwhile."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    told: set[str] = set()
    while True:
        info = storage.get_concurrency_info(pool)
        holders = info.active_run_ids | info.assigned_run_ids
        if info.limit is None or len(info.claimed_slots) < info.limit or not holders:
            return
        new = holders - told
        if new:
            say(f"waiting for run(s) {', '.join(sorted(new))} holding the {pool} pool (Ctrl-C to stop)")
            told |= new
        time.sleep(poll_s)
        reap_dead_runs(instance, say)
