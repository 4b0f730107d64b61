"""Every table is made by the warehouse's versioned migrations, and an older warehouse is
brought up to date in place."""

from __future__ import annotations

import duckdb
import pytest

from flywheel_pipeline.warehouse import schema

PIPELINE_TABLES = {"redacted_messages", "finetune_jobs", "model_registry", "offline_evaluations", "experiment_plans",
                   "ab_test_results"}


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() "
                                      "WHERE database_name = current_database()").fetchall()}


@pytest.mark.both_backends
def test_a_new_warehouse_has_every_table_at_the_current_version(warehouse_target):
    con = schema.connect(warehouse_target.database, data_path=warehouse_target.data_path)
    assert PIPELINE_TABLES <= _tables(con)
    version = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == schema.SCHEMA_VERSION
    con.close()


def test_a_warehouse_from_before_the_pipeline_tables_were_migrated_gets_them_in_place(tmp_path):
    path = tmp_path / "wh.duckdb"
    schema.connect(path).close()
    # a warehouse from before PIPELINE_TABLES_SINCE: the later stages' tables did not exist, except
    # an ab_test_results of the first version that a run had created (without the columns added
    # since) holding a row
    con = duckdb.connect(str(path))
    for table in PIPELINE_TABLES:
        con.execute(f"DROP TABLE {table}")
    con.execute("CREATE TABLE ab_test_results (evaluated_at TIMESTAMP, family VARCHAR, experiment_id VARCHAR, "
                "challenger VARCHAR, champion VARCHAR, decision VARCHAR, reason VARCHAR)")
    con.execute("INSERT INTO ab_test_results VALUES (now()::TIMESTAMP, 'f', 'e', 'c', 'p', 'continue', 'r')")
    con.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(schema.PIPELINE_TABLES_SINCE - 1)])
    con.close()

    con = schema.connect(path)
    assert PIPELINE_TABLES <= _tables(con)
    columns = {r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() "
                                         "WHERE table_name = 'ab_test_results'").fetchall()}
    assert {"arm", "step", "final", "planned_leads", "variance_reduction", "overall_decision"} <= columns
    assert con.execute("SELECT decision FROM ab_test_results").fetchall() == [("continue",)]
    assert con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()[0] == str(
        schema.SCHEMA_VERSION)
    con.close()


def test_no_module_outside_the_migrations_creates_a_table():
    """Warehouse DDL lives in warehouse/schema.py only (derived tables rebuilt with CREATE OR REPLACE
    ... AS SELECT, and temporary tables, are data, not schema; the llm reply classifier's cache is
    a SQLite file of its own, not the warehouse)."""
    import re
    from pathlib import Path

    package = Path(schema.__file__).resolve().parents[1]
    offenders = []
    for path in package.rglob("*.py"):
        if path.relative_to(package).as_posix() in ("warehouse/schema.py", "core/reply_llm_cache.py"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"CREATE\s+(TABLE|SEQUENCE|TYPE|VIEW)\s+IF\s+NOT\s+EXISTS|ALTER\s+TABLE", line, re.I):
                offenders.append(f"{path.relative_to(package)}:{number}")
    assert offenders == []


def test_a_read_only_command_on_a_warehouse_not_migrated_yet_says_so_in_one_line(tmp_path, home, capsys,
                                                                                   warehouse_target):
    if warehouse_target.backend != "file":
        pytest.skip("edits a DuckDB file in place")
    from flywheel_pipeline import paths
    from flywheel_pipeline.cli import main

    path = paths.warehouse_path()
    schema.connect(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE schema_info SET value = '4' WHERE key = 'schema_version'")
    con.close()
    assert main(["sql", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert "has schema 4" in err and "run `flywheel refresh` once to migrate it" in err and "Traceback" not in err
    schema.connect(path).close()  # a writing connection migrates it
    assert main(["sql", "SELECT 1"]) == 0
