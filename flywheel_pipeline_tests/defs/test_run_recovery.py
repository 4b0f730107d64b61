"""`flywheel refresh` processes killed with SIGKILL, or stopped with SIGTERM, never block the
next refresh (issue: a killed run kept its duckdb_warehouse pool slot forever), and a refresh
killed at several moments then run again gives the warehouse an uninterrupted one gives.

Each refresh is a real `flywheel` process on a real SQLite Dagster instance. To stop a run at a
known point, another process holds the warehouse file open: the run's first step then waits
for DuckDB's lock while the run holds its pool slot. Every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.instance import ensure_local_dagster_home
from flywheel_pipeline_tests.conftest import REPO, T0, message, sg

pytestmark = pytest.mark.slow


def _flywheel(home: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    return subprocess.Popen([sys.executable, "-m", "flywheel_pipeline.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _lines(proc: subprocess.Popen) -> list[str]:
    """The process's output lines as they come (read by a thread, so no wait blocks unbounded)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return lines


def _instance(home: Path):
    import dagster as dg

    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _wait(predicate, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _hold_warehouse(path: Path) -> subprocess.Popen:
    """A process holding the DuckDB file open (its write lock) until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('open', flush=True); "
                               "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    return holder


def _pool_holders(home: Path) -> set[str]:
    with _instance(home) as instance:
        return instance.event_log_storage.get_concurrency_info("duckdb_warehouse").active_run_ids


def _status(home: Path, run_id: str) -> str:
    with _instance(home) as instance:
        return instance.get_run_by_id(run_id).status.value


@pytest.fixture
def world(home):
    landing = home / "landing"
    write_jsonl(landing, "messages", [message("m1"), message("m2", lead="lead-2")])
    write_jsonl(landing, "sendgrid", [sg("m1", "delivered", T0), sg("m2", "bounce", T0)])
    ensure_local_dagster_home()
    return home


def test_refresh_killed_with_sigkill_or_stopped_with_sigterm_never_blocks_the_next(world):
    home = world
    holder = _hold_warehouse(home / "warehouse.duckdb")
    procs: list[subprocess.Popen] = []
    try:
        # 1. a refresh whose first step waits for the warehouse while its run holds the pool slot
        first = _flywheel(home, "refresh")
        procs.append(first)
        [dead_run] = _wait(lambda: _pool_holders(home), "the first refresh to hold the pool")
        # 2. a second refresh waits for the pool in its own loop, says so, and stops on SIGTERM
        second = _flywheel(home, "refresh")
        procs.append(second)
        said = _lines(second)
        _wait(lambda: any("waiting for run(s)" in line and dead_run in line for line in said),
              "the second refresh to say it waits", timeout_s=60)
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        time.sleep(0.2)
        assert second.returncode == 130 and "flywheel refresh: interrupted\n" in said
        # 3. SIGKILL the first mid-step: its run stays STARTED, holding the slot
        first.kill()
        first.wait(timeout=30)
        assert _status(home, dead_run) == "STARTED" and _pool_holders(home) == {dead_run}
    finally:
        holder.communicate("")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    # 4. the next refresh marks the dead run failed in one line, frees its slot and goes on
    third = _flywheel(home, "refresh")
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0, out
    said = [line for line in out.splitlines() if dead_run in line]
    assert len(said) == 1 and "died with its process" in said[0] and "marked failed" in said[0], out
    assert _status(home, dead_run) == "FAILURE"
    assert _pool_holders(home) == set()
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM outcome_labels").fetchone()[0] == 2
    finally:
        con.close()


def test_sigterm_during_a_step_ends_the_run_and_the_process(world):
    home = world
    holder = _hold_warehouse(home / "warehouse.duckdb")
    try:
        refresh = _flywheel(home, "refresh")
        try:
            [run_id] = _wait(lambda: _pool_holders(home), "the refresh to hold the pool")
            time.sleep(1.0)  # inside the step, waiting for DuckDB's lock
            refresh.send_signal(signal.SIGTERM)
            out, _ = refresh.communicate(timeout=90)
        finally:
            if refresh.poll() is None:
                refresh.kill()
                refresh.wait(timeout=30)
    finally:
        holder.communicate("")
    assert refresh.returncode != 0, out
    assert _status(home, run_id) == "FAILURE"
    nxt = _flywheel(home, "refresh")
    out, _ = nxt.communicate(timeout=300)
    assert nxt.returncode == 0 and "died with its process" not in out, out


def test_processes_starting_on_a_new_home_at_once_leave_one_loadable_instance(tmp_path):
    """Several `flywheel` processes on a new FLYWHEEL_HOME at one instant: the local instance's
    SQLite databases are created once (created by each at once, alembic_version got two heads
    and no later process could load the instance)."""
    import sqlite3

    home = tmp_path / "fw"
    # each process imports Dagster first, then all set up the instance at one instant and load it
    script = ("import sys, time; import dagster as dg; "
              "from flywheel_pipeline.instance import ensure_local_dagster_home; "
              "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); ensure_local_dagster_home(); "
              "dg.DagsterInstance.get().dispose()")
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("DAGSTER_HOME", None)
    start_at = str(time.time() + 8)
    starters = [subprocess.Popen([sys.executable, "-c", script, start_at], env=env, stderr=subprocess.PIPE,
                                 text=True) for _ in range(3)]
    for starter in starters:
        _, err = starter.communicate(timeout=120)
        assert starter.returncode == 0, err[-2000:]
    databases = sorted((home / "dagster").rglob("*.db"))
    assert databases
    for database in databases:
        con = sqlite3.connect(database)
        try:
            assert len(con.execute("SELECT * FROM alembic_version").fetchall()) == 1, database
        finally:
            con.close()
    later = subprocess.run([sys.executable, "-c", script, "0"], env=env, capture_output=True, text=True, timeout=120)
    assert later.returncode == 0, later.stderr[-2000:]


@pytest.mark.parametrize("config", ["local", "production"])
def test_run_monitoring_is_on_in_both_instance_configs(home, config):
    if config == "local":
        text = (ensure_local_dagster_home() / "dagster.yaml").read_text()
    else:
        text = (REPO / "dagster.yaml").read_text()
    monitoring = yaml.safe_load(text)["run_monitoring"]
    assert monitoring["enabled"] is True and monitoring["free_slots_after_run_end_seconds"] > 0
    if config == "local":
        with _instance(home) as instance:
            assert instance.run_monitoring_enabled
            assert instance.run_monitoring_settings["start_timeout_seconds"] == 180


def _labels_digest(home: Path) -> tuple:
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("""
            SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM email_events),
                   (SELECT count(*) FROM crm_events), (SELECT count(*) FROM replies),
                   (SELECT count(*) FROM quarantine),
                   (SELECT md5(string_agg(concat_ws('|', message_id, stage, quality_score, deal_value, is_mature),
                                          ',' ORDER BY message_id)) FROM outcome_labels)""").fetchone()
    finally:
        con.close()


def test_refresh_killed_at_several_moments_then_run_again_equals_an_uninterrupted_refresh(tmp_path):
    import shutil

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    sim = _flywheel(killed, "simulate", "--days", "10", "--messages-per-day", "300", "--leads-per-org", "200",
                    "--end", "2026-03-01")
    out, _ = sim.communicate(timeout=120)
    assert sim.returncode == 0, out
    shutil.copytree(killed / "landing", clean / "landing")
    as_of = ("--as-of", "2026-03-01T00:00:00+00:00")
    deaths, said = 0, []
    for delay in (2.5, 4.0, 5.5):  # import, run start, ingestion, labelling (the moments vary)
        refresh = _flywheel(killed, "refresh", *as_of)
        time.sleep(delay)
        if refresh.poll() is None:
            refresh.kill()
            deaths += 1
        said.append(refresh.communicate(timeout=60)[0])
    final = _flywheel(killed, "refresh", *as_of)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out
    said.append(out)
    # how many kills landed while a run was in progress varies with the machine's speed; the
    # warehouse must not depend on it
    assert sum(o.count("died with its process") for o in said) <= deaths
    reference = _flywheel(clean, "refresh", *as_of)
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out
    assert deaths >= 1
    assert _labels_digest(killed) == _labels_digest(clean)
    with _instance(killed) as instance:
        assert not instance.event_log_storage.get_concurrency_info("duckdb_warehouse").active_run_ids
