"""`flywheel sql` (the README's way to read `outcome_labels` without a DuckDB CLI) and
`flywheel ui`. The demo, simulate and refresh commands are tested with Dagster in
test_dagster_assets.py."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from flywheel_pipeline.cli import main
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, message, run_pipeline, sg


@pytest.fixture
def warehouse(home):
    landing = home / "landing"
    write_jsonl(landing, "messages", [message("m1"), message("m2", lead="lead-2")])
    write_jsonl(landing, "sendgrid", [sg("m1", "delivered", T0 + timedelta(seconds=5)),
                                      sg("m2", "bounce", T0 + timedelta(seconds=5))])
    con = connect(home / "warehouse.duckdb")
    run_pipeline(con, landing)
    con.close()
    return home / "warehouse.duckdb"


def test_sql_prints_a_table_and_streams_csv(warehouse, capsys):
    assert main(["sql", "SELECT message_id, stage, quality_score FROM outcome_labels ORDER BY 1"]) == 0
    table = capsys.readouterr().out
    assert "message_id" in table and "delivered" in table and "bounced" in table

    assert main(["sql", "SELECT message_id, stage FROM outcome_labels ORDER BY 1", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["message_id", "stage"], ["m1", "delivered"], ["m2", "bounced"]]


def test_sql_opens_the_warehouse_read_only_and_reports_errors_without_a_traceback(warehouse, capsys):
    assert main(["sql", "DELETE FROM messages"]) == 1
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", "SELEC 1"]) == 1
    assert "Parser Error" in capsys.readouterr().err
    con = connect(warehouse, read_only=True)
    assert con.execute("SELECT count(*) FROM outcome_labels").fetchone()[0] == 2
    con.close()


def test_sql_says_what_to_do_without_a_warehouse_or_while_a_run_writes_it(home, warehouse, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('open', flush=True); "
                               "sys.stdin.read()", str(warehouse)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert main(["sql", "SELECT 1"]) == 1
        assert "wait for the Dagster run that holds it" in capsys.readouterr().err
    finally:
        holder.communicate("")
    assert main(["sql", "SELECT 1"]) == 0

    warehouse.unlink()
    assert main(["sql", "SELECT 1"]) == 1
    assert "no warehouse at" in capsys.readouterr().err


def test_ui_runs_the_dagster_of_this_environment_not_the_first_on_path(home, tmp_path, monkeypatch):
    impostor = tmp_path / "bin" / "dagster"
    impostor.parent.mkdir()
    impostor.write_text("#!/bin/sh\nexit 3\n")
    impostor.chmod(0o755)
    monkeypatch.setenv("PATH", f"{impostor.parent}{os.pathsep}{os.environ['PATH']}")
    execs = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    assert main(["ui", "--port", "3123"]) == 0
    [argv] = execs
    assert argv[0] == os.path.join(os.path.dirname(sys.executable), "dagster")
    assert argv[1:] == ["dev", "-m", "flywheel_pipeline.definitions", "--host", "127.0.0.1", "--port", "3123"]
    assert (home / "dagster" / "dagster.yaml").exists()  # the local (SQLite) instance it opens
