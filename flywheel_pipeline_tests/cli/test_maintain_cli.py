"""`flywheel maintain`: through the lake_maintenance job on both backends, --dry-run, and bad input
in one line."""

from __future__ import annotations

import json

import pytest

from flywheel_pipeline import paths
from flywheel_pipeline.cli import build_parser, main
from flywheel_pipeline.warehouse import lake
from flywheel_pipeline.warehouse.lake_maintenance import snapshot_ids
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests import lake as test_lake

_REASON = test_lake.postgres_reason()


def test_flywheel_help_lists_maintain():
    assert "maintain" in build_parser().format_help()
    shown = build_parser()._subparsers._group_actions[0].choices["maintain"].format_help()
    assert "--dry-run" in shown and "--retention-days" in shown and "FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS" in shown


def test_maintain_on_the_file_backend_checkpoints_only(home, monkeypatch, capsys):
    monkeypatch.delenv("FLYWHEEL_WAREHOUSE", raising=False)  # this test is the file backend's, whatever the run's
    monkeypatch.delenv("FLYWHEEL_WAREHOUSE_DATA_PATH", raising=False)
    assert main(["maintain"]) == 1
    assert "no warehouse at" in capsys.readouterr().err
    connect(paths.warehouse_path()).close()
    assert main(["maintain", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would CHECKPOINT only; nothing changed (dry run)" in out
    assert "a DuckDB file: no snapshots to expire" in out and "expire, except" not in out
    assert main(["maintain"]) == 0
    out = capsys.readouterr().out
    assert "of job maintenance (succeeded)" in out and "CHECKPOINT only" in out


def test_bad_retention_is_one_line(home, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["maintain", "--retention-days", "0"])
    assert exited.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS", "a week")
    assert main(["maintain", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("flywheel maintain: FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS must be a whole number of days of at "
                   "least 1, got 'a week'")


def test_maintain_on_a_lake_merges_and_keeps_what_exports_name(home, tmp_path, monkeypatch, capsys):
    if _REASON:
        pytest.skip(_REASON)
    with test_lake.scratch_lake(tmp_path / "lake-data") as target:
        for name, value in target.env().items():
            monkeypatch.setenv(name, value)
        con = lake.connect(target.database, target.data_path)
        con.execute("CREATE TABLE email_events (i INTEGER)")
        for k in range(20):
            con.execute("INSERT INTO email_events SELECT range FROM range(?, ?)", [k * 100, k * 100 + 100])
        exported = snapshot_ids(con)[5]
        con.close()
        (paths.exports_dir() / "v1").mkdir(parents=True)
        (paths.exports_dir() / "v1" / "manifest.json").write_text(json.dumps({"warehouse_snapshot": exported}))
        assert main(["maintain", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "except the 1 that exports name" in out
        assert "would merge the small files of 1 tables (email_events)" in out
        assert "nothing changed (dry run)" in out
        assert main(["maintain", "--retention-days", "1"]) == 0
        out = capsys.readouterr().out
        assert "of job maintenance (succeeded)" in out
        assert "data files 20 -> " in out and "20 small files merged; 0 snapshots expired" in out, out
        con = lake.connect(target.database, target.data_path)
        assert con.execute("SELECT count(*), sum(i) FROM email_events").fetchone() == (2000, 1999 * 1000)
        assert exported in snapshot_ids(con)
        con.close()


def test_a_dry_run_refuses_an_outdated_lake_and_migrates_nothing(home, lake_target, monkeypatch, capsys):
    """The dry run attaches the lake writable (DuckLake's orphan dry run needs it) but never
    migrates: an outdated schema is one line, and stays as it was."""
    for name, value in lake_target.env().items():
        monkeypatch.setenv(name, value)
    con = connect(lake_target.database, data_path=lake_target.data_path)
    con.execute("UPDATE schema_info SET value = '1' WHERE key = 'schema_version'")
    con.close()
    assert main(["maintain", "--dry-run"]) != 0
    assert "has schema 1" in capsys.readouterr().err
    con = lake.connect(lake_target.database, lake_target.data_path)
    assert con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()[0] == "1"
    con.close()
