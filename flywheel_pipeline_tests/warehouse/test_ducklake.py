"""The ducklake warehouse backend on the local PostgreSQL (a scratch database per test): extensions
loaded offline from their PyPI packages, the same labels and exports as the DuckDB file, snapshots
that rebuild byte-identical exports, concurrent writers, write conflicts and an unreachable catalog."""

from __future__ import annotations

import json
import socket
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.warehouse import extensions, lake
from flywheel_pipeline.warehouse.concurrency import WriteConflict, retry_on_conflict
from flywheel_pipeline.warehouse.datasets import (PairConfig, SelectionConfig, build_preference_pairs,
                                                  build_training_examples, export_jsonl, redact_new_messages)
from flywheel_pipeline.warehouse.schema import SCHEMA_VERSION, connect, take_ids, transaction
from flywheel_pipeline_tests import lake as test_lake
from flywheel_pipeline_tests.conftest import REPO, T0, message, run_pipeline, sg

_REASON = test_lake.postgres_reason()
needs_postgres = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
AS_OF = T0.replace(month=5, day=1)


def _world(landing: Path, seed: int = 21, end: date = date(2026, 5, 1), *, days: int = 16,
           per_day: int = 20, leads: int = 80) -> None:
    simulate(landing, SimConfig(seed=seed, days=days, end=end, organizations=2, leads_per_org=leads,
                                messages_per_day=per_day))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- extensions -----------------------------------------------------------------------------

def test_extensions_load_from_their_packages_and_nothing_is_fetched(tmp_path):
    empty = tmp_path / "no-extensions"
    empty.mkdir()
    con = duckdb.connect(config={**extensions.OFFLINE_CONFIG, "extension_directory": str(empty)})
    extensions.load(con)
    loaded = dict(con.execute("SELECT extension_name, loaded FROM duckdb_extensions() "
                              "WHERE extension_name IN ('ducklake', 'postgres_scanner', 'httpfs')").fetchall())
    assert loaded == {"ducklake": True, "postgres_scanner": True, "httpfs": True}
    # an extension no package ships is neither downloaded nor auto-loaded: it is simply missing
    with pytest.raises(duckdb.Error):
        con.execute("LOAD spatial")
    with pytest.raises(duckdb.Error):
        con.execute("SELECT ST_Point(1, 2)")
    assert list(empty.iterdir()) == []  # nothing was installed
    for name in extensions.PACKAGES:
        path = extensions.extension_file(name)
        assert path.parent.name == f"v{duckdb.__version__}" and path.is_file()


def test_a_missing_extension_package_is_named_with_the_command_that_installs_it(monkeypatch):
    real = extensions.importlib.util.find_spec
    monkeypatch.setattr(extensions.importlib.util, "find_spec",
                        lambda name: None if name == "duckdb_extension_ducklake" else real(name))
    with pytest.raises(extensions.MissingExtension, match=r"pip install 'duckdb-extension-ducklake==1\.5\.5'"):
        extensions.load(duckdb.connect(config=dict(extensions.OFFLINE_CONFIG)))


@pytest.mark.both_backends
def test_every_warehouse_connection_has_automatic_extension_downloads_off(con):
    for setting in extensions.OFFLINE_CONFIG:
        assert con.execute(f"SELECT current_setting('{setting}')").fetchone()[0] is False


def test_lake_ddl_drops_keys_sequences_and_user_types():
    assert lake.lake_ddl("CREATE SEQUENCE IF NOT EXISTS s START 1") is None
    assert lake.lake_ddl("CREATE TYPE IF NOT EXISTS t AS ENUM ('a')") is None
    ddl = lake.lake_ddl("CREATE TABLE x (a VARCHAR PRIMARY KEY, e sendgrid_event NOT NULL, "
                        "b BIGINT, PRIMARY KEY (a, b))")
    assert ddl == "CREATE TABLE x (a VARCHAR, e VARCHAR NOT NULL, b BIGINT)"


# ---- the same results on both backends ------------------------------------------------------

@needs_postgres
def test_the_same_landing_data_gives_the_same_labels_and_byte_identical_exports(tmp_path, lake_target):
    landing = tmp_path / "landing"
    _world(landing)
    outputs = {}
    for name, database, data_path in (("file", str(tmp_path / "wh.duckdb"), None),
                                      ("ducklake", lake_target.database, lake_target.data_path)):
        con = connect(database, data_path=data_path)
        try:
            run_pipeline(con, landing, as_of=AS_OF)
            assert run_pipeline(con, landing, as_of=AS_OF)["messages"].accepted == 0  # once only
            redact_new_messages(con)
            build_training_examples(con, SelectionConfig())
            build_preference_pairs(con, PairConfig())
            labels = con.execute("SELECT * EXCLUDE (message_key, label_run_id) FROM outcome_labels "
                                 "ORDER BY organization_id, message_id").fetchall()
            counts = con.execute("SELECT (SELECT count(*) FROM email_events), (SELECT count(*) FROM messages), "
                                 "(SELECT count(*) FROM quarantine), (SELECT count(DISTINCT message_key) "
                                 "FROM message_keys), (SELECT count(*) FROM message_keys)").fetchone()
            export = export_jsonl(con, tmp_path / f"exports-{name}", ["sft", "dpo"])
        finally:
            con.close()
        files = {n: p.read_bytes() for n, p in export.files.items()}
        outputs[name] = (labels, counts, export.version, files, export.snapshot)
    file_out, lake_out = outputs["file"], outputs["ducklake"]
    assert len(file_out[0]) >= 300 and file_out[0] == lake_out[0]
    assert file_out[1] == lake_out[1] and file_out[1][3] == file_out[1][4]  # message keys unique
    assert file_out[2] == lake_out[2] and file_out[3] == lake_out[3]
    assert sum(len(b) for b in file_out[3].values()) > 0
    assert file_out[4] is None and isinstance(lake_out[4], int)


# ---- time travel ----------------------------------------------------------------------------

@needs_postgres
def test_an_export_records_its_snapshot_and_rebuilds_byte_identical_from_it(tmp_path, lake_target):
    landing = tmp_path / "landing"
    _world(landing)
    con = connect(lake_target.database, data_path=lake_target.data_path)
    run_pipeline(con, landing, as_of=AS_OF)
    redact_new_messages(con)
    build_training_examples(con, SelectionConfig())
    first = export_jsonl(con, tmp_path / "exports", ["sft", "trl_kto"])
    manifest = json.loads((first.directory / "manifest.json").read_text())
    assert manifest["warehouse_snapshot"] == first.snapshot is not None
    # the warehouse moves on: more data, another selection, another export
    _world(tmp_path / "more", seed=5, end=date(2026, 5, 20))
    for path in (tmp_path / "more").rglob("*.jsonl"):
        target = landing / path.relative_to(tmp_path / "more")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_name("later-" + target.name).write_bytes(path.read_bytes())
    run_pipeline(con, landing, as_of=AS_OF.replace(day=21))
    redact_new_messages(con)
    build_training_examples(con, SelectionConfig(min_quality_score=0.5))
    assert export_jsonl(con, tmp_path / "exports", ["sft", "trl_kto"]).version != first.version
    con.close()
    at = connect(lake_target.database, data_path=lake_target.data_path, snapshot=first.snapshot)
    rebuilt = export_jsonl(at, tmp_path / "rebuilt", ["sft", "trl_kto"])
    with pytest.raises(duckdb.Error):  # a snapshot is read-only
        at.execute("DELETE FROM training_examples")
    at.close()
    assert rebuilt.version == first.version and rebuilt.snapshot == first.snapshot
    for name, path in first.files.items():
        assert rebuilt.files[name].read_bytes() == path.read_bytes(), name
    assert (rebuilt.directory / "manifest.json").read_bytes() == (first.directory / "manifest.json").read_bytes()


@needs_postgres
def test_flywheel_datasets_snapshot_on_the_cli(home, lake_target, monkeypatch, capsys):
    from flywheel_pipeline import paths
    from flywheel_pipeline.cli import main

    monkeypatch.setenv("FLYWHEEL_WAREHOUSE", lake_target.database)
    monkeypatch.setenv("FLYWHEEL_WAREHOUSE_DATA_PATH", lake_target.data_path)
    _world(paths.landing_dir(), days=30, per_day=30, leads=120)  # enough for the exports' minimum of 10
    assert main(["refresh", "--as-of", AS_OF.isoformat()]) == 0
    assert main(["datasets"]) == 0
    manifests = [json.loads(p.read_text()) for p in paths.exports_dir().glob("*/manifest.json")]
    assert len(manifests) == 2 and all(isinstance(m["warehouse_snapshot"], int) for m in manifests)
    assert main(["sql", "SELECT count(*) AS n FROM outcome_labels"]) == 0
    capsys.readouterr()
    assert main(["summary"]) == 0
    assert "Warehouse ducklake:postgres:dbname=flywheel_lake_" in capsys.readouterr().out
    # the same files again from the recorded snapshot, into an empty exports directory
    snapshot = manifests[0]["warehouse_snapshot"]
    monkeypatch.setenv("FLYWHEEL_EXPORTS", str(home / "rebuilt"))
    capsys.readouterr()
    assert main(["datasets", "--snapshot", str(snapshot)]) == 0
    for original in paths.flywheel_home().joinpath("exports").glob("*/*.jsonl"):
        again = home / "rebuilt" / original.parent.name / original.name
        assert again.read_bytes() == original.read_bytes()
    assert main(["datasets", "--snapshot", "999999"]) == 2
    assert "snapshot" in capsys.readouterr().err


def test_the_file_backend_says_it_keeps_no_snapshots(home, capsys):
    from flywheel_pipeline.cli import main

    assert main(["datasets", "--snapshot", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ducklake backend" in err and "no history" in err


# ---- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["refresh"], ["summary"]])
def test_an_unreachable_catalog_is_one_line_without_the_password(home, monkeypatch, capsys, command):
    from flywheel_pipeline.cli import main

    port = _free_port()  # nothing listens there
    monkeypatch.setenv("FLYWHEEL_WAREHOUSE", f"ducklake:postgres:dbname=lake host=127.0.0.1 port={port} "
                                             "user=flywheel password=hunter2secret")
    monkeypatch.setenv("FLYWHEEL_WAREHOUSE_DATA_PATH", str(home / "data"))
    code = main(command)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot reach the DuckLake catalog database" in err and f"port={port}" in err
    assert "hunter2secret" not in captured.err + captured.out and "password=***" in err


def test_mask_hides_passwords_in_both_forms():
    assert lake.mask("dbname=x password=s3cret host=h") == "dbname=x password=*** host=h"
    assert lake.mask("postgres://u:s3cret@h:5432/db") == "postgres://u:***@h:5432/db"


@needs_postgres
def test_a_write_conflict_is_retried_and_then_reported(lake_target):
    first = connect(lake_target.database, data_path=lake_target.data_path)
    other = connect(lake_target.database, data_path=lake_target.data_path)
    attempts = []

    def take_a_batch_id_while_another_process_does():
        with transaction(first):
            mine = take_ids(first, "batch_id")
            if len(attempts) < 1 or always_conflict:
                with transaction(other):  # another process commits meanwhile
                    attempts.append(take_ids(other, "batch_id"))
        return mine

    always_conflict = False
    mine = retry_on_conflict(take_a_batch_id_while_another_process_does, "test", sleep=lambda s: None)
    assert len(attempts) == 1 and mine == attempts[0] + 1  # rolled back once, then took the next id
    always_conflict = True
    with pytest.raises(WriteConflict, match="still conflicting with other writers after 3 attempts"):
        retry_on_conflict(take_a_batch_id_while_another_process_does, "test", attempts=3, sleep=lambda s: None)
    assert first.execute("SELECT value FROM warehouse_counters WHERE name = 'batch_id'").fetchone()[0] == 5
    first.close()
    other.close()


@needs_postgres
def test_processes_creating_a_new_lake_at_once_all_open_it(lake_target):
    """The first ATTACH of an empty catalog creates the lake; DuckLake's creation loses a race
    with another process's ("relation ducklake_metadata already exists"), which attaches again."""
    # each process loads its extensions first, then all attach the empty catalog at one instant
    script = ("import sys, time; from flywheel_pipeline.warehouse import extensions, lake; import duckdb; "
              "extensions.load(duckdb.connect()); "
              "time.sleep(max(0.0, float(sys.argv[3]) - time.time())); "
              "from flywheel_pipeline.warehouse.schema import connect; "
              "con = connect(sys.argv[1], data_path=sys.argv[2]); "
              "print(con.execute('SELECT value FROM schema_info WHERE key = ?', ['schema_version']).fetchone()[0])")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start_at = str(time.time() + 6)
    openers = [subprocess.Popen([sys.executable, "-c", script, lake_target.database, lake_target.data_path, start_at],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for opener in openers:
        out, err = opener.communicate(timeout=120)
        assert opener.returncode == 0, err[-2000:]
        assert out.strip() == str(SCHEMA_VERSION)


@needs_postgres
def test_concurrent_writers_ingest_each_record_once(tmp_path, lake_target):
    landing = tmp_path / "landing"
    for i in range(4):
        write_jsonl(landing, "messages", [message(f"m{i}-{j}", lead=f"l{j}") for j in range(40)], name=f"m{i}.jsonl")
        write_jsonl(landing, "sendgrid", [sg(f"m{i}-{j}", "delivered", T0, sg_event_id=f"e{i}-{j}")
                                          for j in range(40)], name=f"e{i}.jsonl")
    connect(lake_target.database, data_path=lake_target.data_path).close()  # created once
    # three processes ingest the same landing zone at once, one file per transaction
    script = ("import sys; from pathlib import Path; from flywheel_pipeline.warehouse.schema import connect; "
              "from flywheel_pipeline.warehouse.ingest import ingest_source; "
              "con = connect(sys.argv[1], data_path=sys.argv[2]); "
              "[ingest_source(con, Path(sys.argv[3]), s, chunk_files=1) for s in ('messages', 'sendgrid')]")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", script, lake_target.database, lake_target.data_path,
                                 str(landing)], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err[-2000:]
    con = connect(lake_target.database, data_path=lake_target.data_path)
    assert con.execute("SELECT count(*), count(DISTINCT (organization_id, message_id)), "
                       "count(DISTINCT message_key) FROM messages").fetchone() == (160, 160, 160)
    assert con.execute("SELECT count(*), count(DISTINCT sg_event_id) FROM email_events").fetchone() == (160, 160)
    assert con.execute("SELECT count(*), count(DISTINCT (source, file_name)) FROM landing_files").fetchone() == (8, 8)
    assert con.execute("SELECT count(*), count(DISTINCT batch_id) FROM ingest_batches").fetchone() == (8, 8)
    con.close()


# ---- data in S3 -----------------------------------------------------------------------------

@needs_postgres
def test_lake_data_in_s3_from_the_standard_aws_settings(tmp_path, monkeypatch):
    """The lake's Parquet files in an S3-protocol server on 127.0.0.1 (moto), reached through the
    DuckDB secret made from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for name, value in (("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}"), ("AWS_ACCESS_KEY_ID", "test"),
                            ("AWS_SECRET_ACCESS_KEY", "test-secret"), ("AWS_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        s3.create_bucket(Bucket="lake")
        landing = tmp_path / "landing"
        write_jsonl(landing, "messages", [message(f"m{j}", lead=f"l{j}") for j in range(50)])
        with test_lake.scratch_lake(tmp_path / "unused") as target:
            con = connect(target.database, data_path="s3://lake/flywheel/")
            # Parquet files, not rows inlined in the catalog: a batch larger than DuckLake's inlining limit
            con.execute("CALL flywheel_lake.set_option('data_inlining_row_limit', 0)")
            run_pipeline(con, landing)
            assert con.execute("SELECT count(*) FROM outcome_labels").fetchone()[0] == 50
            con.close()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="flywheel/").get("Contents", [])]
        assert any(k.endswith(".parquet") for k in keys), keys
    finally:
        server.stop()
