"""The landing zone in S3 (moto's server on 127.0.0.1): the store's contract, ingestion reading
objects exactly once with the same result as a directory, and S3 down as one clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.landing_store import DirectoryStore, LandingUnavailable, S3Store, open_store, parse_s3_url
from flywheel_pipeline.warehouse.ingest import ingest_source
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, message, reply, run_pipeline, sg
from flywheel_pipeline_tests.fakes.http import REPO
from flywheel_pipeline_tests.fakes.s3_server import s3_landing  # noqa: F401 (fixture)
from flywheel_pipeline_tests.warehouse.test_ingest import labels


def _land(store, source: str, records, name: str, tmp_path) -> None:
    """Write a landing file locally, then store it under ``name``."""
    path = write_jsonl(tmp_path / "staging", source, records, name=name)
    store.put_file(source, name, path)


def test_s3_urls_are_parsed_and_the_location_chooses_the_store(tmp_path):
    assert parse_s3_url("s3://b/p/q/") == ("b", "p/q/")
    assert parse_s3_url("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="names no bucket"):
        parse_s3_url("s3:///prefix")
    assert isinstance(open_store(tmp_path), DirectoryStore)
    assert open_store(tmp_path).url == str(tmp_path.absolute())


def test_objects_are_listed_sealed_only_in_name_order_and_never_replaced(s3_landing, tmp_path):
    store = open_store(s3_landing.url)
    assert isinstance(store, S3Store)
    _land(store, "sendgrid", [sg("m1", "open", T0)], "b.jsonl", tmp_path)
    _land(store, "sendgrid", [sg("m1", "delivered", T0)], "a.jsonl", tmp_path)
    client = s3_landing.client()
    # what is not a sealed landing file of the source is never listed
    for key in ("zone/sendgrid/.hidden.jsonl", "zone/sendgrid/part.jsonl.open", "zone/sendgrid/sub/x.jsonl",
                "zone/sendgridx/y.jsonl", "other/sendgrid/z.jsonl"):
        client.put_object(Bucket=s3_landing.bucket, Key=key, Body=b"{}\n")
    files = store.list_files("sendgrid")
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    assert all(f.path is None and f.key.startswith("zone/sendgrid/") for f in files)
    # the same bytes again (an upload whose answer a crash lost) are accepted; other bytes are not
    staged = tmp_path / "staging" / "sendgrid" / "a.jsonl"
    store.put_file("sendgrid", "a.jsonl", staged)
    staged.chmod(0o600)
    other = tmp_path / "other.jsonl"
    other.write_text('{"x": 1}\n')
    with pytest.raises(FileExistsError, match="other content"):
        store.put_file("sendgrid", "a.jsonl", other)
    assert s3_landing.objects("sendgrid")["a.jsonl"] == staged.read_bytes()
    # the directory store keeps the same contract
    directory = DirectoryStore(tmp_path / "dir")
    directory.put_file("sendgrid", "a.jsonl", staged)
    directory.put_file("sendgrid", "a.jsonl", staged)
    with pytest.raises(FileExistsError):
        directory.put_file("sendgrid", "a.jsonl", other)
    assert [f.name for f in directory.list_files("sendgrid")] == ["a.jsonl"]


def test_ingestion_reads_each_object_once_and_labels_equal_a_directory_zone(s3_landing, tmp_path):
    store = open_store(s3_landing.url)
    local = tmp_path / "landing"
    batches = [
        ("messages", [message("m1"), message("m2", lead="lead-2")], "messages-1.jsonl"),
        ("sendgrid", [sg("m1", "delivered", T0, sg_event_id="d1"), sg("m1", "open", T0, sg_event_id="o1"),
                      sg("m2", "bounce", T0, sg_event_id="b2")], "sendgrid-1.jsonl"),
        ("replies", [reply("r1", "m1", T0, "Yes, let's meet on Tuesday.")], "replies-1.jsonl"),
    ]
    for source, records, name in batches:
        _land(store, source, records, name, tmp_path)
        write_jsonl(local, source, records, name=name)
    s3_con, dir_con = connect(tmp_path / "s3.duckdb"), connect(tmp_path / "dir.duckdb")
    try:
        run_pipeline(s3_con, store)
        run_pipeline(dir_con, local)
        assert labels(s3_con) == labels(dir_con) and len(labels(s3_con)) == 2
        again = ingest_source(s3_con, store, "sendgrid")
        assert (again.files, again.accepted) == (0, 0)
        # a new object is the only one read next time; a duplicate inside it is skipped
        _land(store, "sendgrid", [sg("m1", "click", T0, sg_event_id="c1", url="https://x.example/a"),
                                  sg("m1", "open", T0, sg_event_id="o1")], "sendgrid-2.jsonl", tmp_path)
        more = ingest_source(s3_con, store, "sendgrid")
        assert (more.files, more.lines, more.accepted, more.duplicates) == (1, 2, 1, 1)
        assert s3_con.execute("SELECT source, file_name FROM landing_files ORDER BY 1, 2").fetchall() == [
            ("messages", "messages-1.jsonl"), ("replies", "replies-1.jsonl"),
            ("sendgrid", "sendgrid-1.jsonl"), ("sendgrid", "sendgrid-2.jsonl")]
        assert landing_zone.fingerprint(store, ["sendgrid"])["sendgrid"].startswith("2:")
    finally:
        s3_con.close()
        dir_con.close()


def test_s3_down_is_one_clear_error_without_credentials(s3_landing, tmp_path):
    store = open_store(s3_landing.url)
    s3_landing.stop()
    with pytest.raises(LandingUnavailable) as caught:
        store.list_files("sendgrid")
    text = str(caught.value)
    assert s3_landing.url in text and s3_landing.endpoint in text and "\n" not in text
    con = connect(tmp_path / "w.duckdb")
    try:
        with pytest.raises(LandingUnavailable):
            ingest_source(con, store, "messages")
        assert con.execute("SELECT count(*) FROM landing_files").fetchone()[0] == 0
    finally:
        con.close()
    # the command: one line on stderr naming what is unreachable, exit 1, no secret printed
    env = dict(os.environ, FLYWHEEL_HOME=str(tmp_path / "fw"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "flywheel_pipeline.cli", "refresh"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"flywheel refresh: landing zone {s3_landing.url} at {s3_landing.endpoint} is unreachable: "
                     "EndpointConnectionError"], done.stderr
    assert s3_landing.env["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
    assert s3_landing.env["AWS_ACCESS_KEY_ID"] not in done.stdout + done.stderr
    # a bucket that does not exist is named as such
    missing = open_store(f"s3://no-such-bucket-here/p/")
    s3_landing.start()
    with pytest.raises(LandingUnavailable, match="no-such-bucket-here.*NoSuchBucket"):
        missing.check()


def test_commands_that_land_files_write_them_to_s3(s3_landing, tmp_path, monkeypatch, capsys):
    from flywheel_pipeline.cli import main

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "fw"))
    world = ["simulate", "--days", "28", "--messages-per-day", "4", "--leads-per-org", "5", "--end", "2026-03-01"]
    assert main(world) == 0
    store = open_store(s3_landing.url)
    messages = store.list_files("messages")
    assert len(messages) == 28 and capsys.readouterr().out.count("files uploaded") == 1
    assert main(world) == 0  # nothing new: nothing uploaded again
    assert "0 files uploaded" in capsys.readouterr().out
    assert [f.name for f in store.list_files("messages")] == [f.name for f in messages]
    labelled = tmp_path / "labels.jsonl"
    labelled.write_text('{"id": "r1", "organization_id": "org-1", "text": "hi", "intent": "not_now"}\n')
    assert main(["replies", "correct", str(labelled)]) == 0
    (label_file,) = s3_landing.objects("reply_labels").values()
    assert b'"intent":"not_now"' in label_file
