"""`flywheel sql` (the README's way to read `outcome_labels` without a DuckDB CLI), `flywheel ui`,
`flywheel validate`'s text, the summary's table, and the help of every option. The demo,
simulate and refresh commands are tested with Dagster in test_dagster_assets.py."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import timedelta

import argparse
import json
from pathlib import Path

import pytest
import yaml

from flywheel_pipeline.cli import build_parser, main
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import REPO, T0, message, run_pipeline, sg


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
    # the learn tables are there to query from the first migration on
    assert main(["sql", "SELECT judge, metric, task_type, n, auc, auc_low, auc_high, spearman, trusted "
                        "FROM judge_calibration"]) == 0
    assert "trusted" in capsys.readouterr().out


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
    assert argv[1:3] == ["dev", "-w"] and argv[4:] == ["--host", "127.0.0.1", "--port", "3123"]
    assert (home / "dagster" / "dagster.yaml").exists()  # the local (SQLite) instance it opens
    # the workspace it hands `dagster dev` is the checkout's workspace.yaml, so the code location
    # has one name (`flywheel_pipeline`, as in pyproject.toml) under `make ui` and `dagster dev -w`
    workspace = yaml.safe_load(Path(argv[3]).read_text())
    checkout = yaml.safe_load((REPO / "workspace.yaml").read_text())
    [location] = workspace["load_from"]
    assert location["python_module"].pop("working_directory") == os.getcwd()
    assert workspace == checkout
    assert location["python_module"]["location_name"] == "flywheel_pipeline"




def test_sql_prints_how_many_rows_the_result_has(warehouse, capsys):
    assert main(["sql", "SELECT message_id FROM outcome_labels ORDER BY 1"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("2 rows") and "? rows" not in out
    assert main(["sql", "SELECT message_id FROM outcome_labels ORDER BY 1", "--max-rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "m1" in out and "m2" not in out and out.rstrip().endswith("first 1 of 2 rows shown (more with --max-rows, "
                                                                      "all with --csv)")
    # beyond DuckDB's 10,000-row preview it used to print "? rows" and a middle row as the last
    assert main(["sql", "SELECT range AS i FROM range(25000) ORDER BY i", "--max-rows", "3"]) == 0
    out = capsys.readouterr().out
    assert "? rows" not in out and "9999" not in out and "first 3 of 25,000 rows shown" in out
    assert [line.strip("│ ") for line in out.splitlines() if line.strip("│ ").isdigit()] == ["0", "1", "2"]
    assert main(["sql", "SELECT 1 AS one"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("1 row")


def _option_helps(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, option, its help as printed) for every option of every (sub)command."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _option_helps(sub, (*path, name))
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield path, action, formatter._expand_help(action) if action.help else ""


def test_every_option_says_its_default():
    helps = list(_option_helps(build_parser()))
    assert len({p for p, _, _ in helps}) >= 11  # every command with options, the replies subcommands too
    for path, action, text in helps:
        if isinstance(action, argparse._StoreTrueAction):
            continue  # a flag: off unless given
        assert "default" in text, (path, action.option_strings, text)
        if action.default is not None:
            assert f"(default: {action.default})" in text, (path, action.option_strings, text)


def test_help_shows_the_defaults_on_the_command_line():
    shown = subprocess.run([sys.executable, "-m", "flywheel_pipeline.cli", "demo", "--help"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "leads in each of the 3 simulated organizations (default: 3000)" in text
    assert "(default: 7)" in text and "(default: 500)" in text and "(default: 90)" in text
    assert "--verbose" in text


def _chat(n: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": "You write outreach."},
                          {"role": "user", "content": f"Write to lead {i}."},
                          {"role": "assistant", "content": f"Hi lead {i}, ..."}]} for i in range(n)]


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel_pipeline.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_validate_prints_only_the_errors_of_an_invalid_file(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text("".join(json.dumps(e) + "\n" for e in _chat(12)))
    broken = _chat(12)
    del broken[4]["messages"][2]  # no assistant message on line 5
    bad.write_text("".join(json.dumps(e) + "\n" for e in broken) + "{not json\n")
    valid = _validate(good)
    assert valid.returncode == 0 and "VALID chat file, 12 examples" in valid.stdout
    assert "training tokens" in valid.stdout and "tokens per example" in valid.stdout  # the estimates stay
    invalid = _validate(bad)
    assert invalid.returncode == 1
    lines = invalid.stdout.splitlines()
    assert lines[0].endswith("INVALID chat file, 13 examples")
    assert "  error no_assistant_message: 1 (first on line 5)" in lines
    assert all(line.startswith(("  error ", "  warning ")) for line in lines[1:]), lines
    assert "token" not in invalid.stdout and "$" not in invalid.stdout


def test_summary_table_keeps_its_columns_on_long_model_ids(home, capsys):
    from flywheel_pipeline.simulator import DEFAULT_MODELS

    landing = home / "landing"
    long_id = "ft:gpt-4o-mini-2024-07-18:a-very-long-organization-name::flywheel-outreach-v12:ckpt-step-1000"
    world_ft = next(m.model_id for m in DEFAULT_MODELS if m.model_id.startswith("ft:"))
    write_jsonl(landing, "messages", [message("m1", model_id=long_id), message("m2", lead="lead-2"),
                                      message("m3", lead="lead-3", model_id=world_ft),
                                      message("m4", lead="lead-4", model_id="sandbox:gpt-4o-mini:supervised:ab12")])
    write_jsonl(landing, "sendgrid", [sg(m, "delivered", T0 + timedelta(seconds=5)) for m in ("m1", "m2", "m3", "m4")])
    con = connect(home / "warehouse.duckdb")
    run_pipeline(con, landing)
    con.close()
    assert main(["summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    start = out.index("  per model (mature labels only):") + 1
    table = out[start:start + 5]
    assert table[0].split() == ["model_id", "n", "score", "reply", "meet", "deals"]
    assert {line.split()[0] for line in table[1:]} == {long_id, "model-a", world_ft,
                                                        "sandbox:gpt-4o-mini:supervised:ab12"}
    # every column ends where its header ends
    for header in ("n", "score", "reply", "meet", "deals"):
        end = table[0].index(f" {header}") + len(header) + 1
        assert all(line[end - 1] != " " and (len(line) == end or line[end] == " ") for line in table), header
    notes = out[start + 5:start + 7]
    assert notes[0].startswith(f"    {world_ft}: a model of the simulated world")
    assert notes[1].startswith("    sandbox:...: a model the SANDBOX fine-tuning backend")
