"""End to end on one S3 landing zone (moto's server on 127.0.0.1): two `flywheel serve` replicas
take a stream of messages, SendGrid events and replies; one is killed with SIGKILL mid-stream and
restarted (its clients fail over to the other meanwhile and retry what was not acknowledged); then
two `flywheel refresh` start at the same moment, both must succeed, and one more runs after them.
Every acknowledged event is in the warehouse exactly once, every landed object ingested once,
every message labelled once, the label runs a chain with no batch folded twice or skipped, and
the labels equal those of a directory landing zone holding the same records, labelled in a
DuckDB file.

It runs on both warehouse backends (``both_backends``; the ducklake one skips, with the reason,
without PostgreSQL on 127.0.0.1:5432):

* file (a DuckDB file): one host, so the two refreshes share the local Dagster instance under
  FLYWHEEL_HOME, both creating it (instance.py creates its SQLite databases under a lock: two at
  once left it unloadable). Its ``duckdb_warehouse`` pool (limit 1) lets one warehouse-writing
  step run at a time, so the two runs' steps take turns (neither waits for the other run as a
  whole; a connection that still finds the file locked waits for the lock,
  WarehouseResource.connect) and both succeed; a step after its twin finds nothing new to do.
* ducklake (a scratch PostgreSQL catalog and a data directory): the two refreshes are two hosts,
  each with its own Dagster instance, so no pool serializes them and their transactions really
  race on the lake, from creating the new catalog (warehouse/lake.py attaches again when it lost
  that race) to ingesting and labelling (write conflicts retried, warehouse/concurrency.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from flywheel_pipeline.core.landing import write_jsonl
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, iso, message, reply, run_pipeline, sg
from flywheel_pipeline_tests.fakes.http import REPO, free_port, start_flywheel_serve
from flywheel_pipeline_tests.fakes.s3_server import s3_landing  # noqa: F401 (fixture)
from flywheel_pipeline_tests.lake import Target
from flywheel_pipeline_tests.warehouse.test_ingest import labels

AS_OF = T0 + timedelta(days=30)
UNITS = 60  # messages, each with 1-3 SendGrid events and every fifth with a reply
KEY = "key-one"
SERVE_ENV = {"FLYWHEEL_API_KEYS": f"org-1={KEY}", "FLYWHEEL_SEGMENT_MAX_AGE_S": "0.5",
             "FLYWHEEL_SEGMENT_MAX_BYTES": "8192", "FLYWHEEL_RATE_LIMIT_PER_MINUTE": "0"}

REFRESH_TIMEOUT_S = 240


def dagster_home(home: Path, target: Target, index: int) -> Path:
    """The Dagster instance of refresh ``index``: on the file backend the one local instance (one
    host), on ducklake one per refresh (two hosts sharing the lake: no pool between them)."""
    return home / "dagster" if target.backend == "file" else home / f"dagster-host-{index}"


def start_refresh(env: dict[str, str], dagster: Path) -> subprocess.Popen:
    """`flywheel refresh --as-of AS_OF` in a subprocess recording in the Dagster instance at ``dagster``."""
    return subprocess.Popen([sys.executable, "-m", "flywheel_pipeline.cli", "refresh", "--as-of", iso(AS_OF)],
                            env={**env, "DAGSTER_HOME": str(dagster)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Its exit code and output (killed past REFRESH_TIMEOUT_S)."""
    try:
        out, _ = proc.communicate(timeout=REFRESH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return -9, f"killed after {REFRESH_TIMEOUT_S} s: {out}"
    return proc.returncode, out


def unit(n: int) -> dict[str, list[dict]]:
    """One message's records as the outreach app and SendGrid post them."""
    sent = T0 + timedelta(minutes=n)
    events = [sg(f"m-{n}", "bounce" if n % 11 == 0 else "delivered", sent + timedelta(minutes=1),
                 sg_event_id=f"d-{n}", organization_id="org-1")]
    if n % 2 == 0 and n % 11:
        events.append(sg(f"m-{n}", "open", sent + timedelta(hours=1), sg_event_id=f"o-{n}", organization_id="org-1"))
    if n % 3 == 0 and n % 11:
        events.append(sg(f"m-{n}", "click", sent + timedelta(hours=2), sg_event_id=f"c-{n}", organization_id="org-1",
                         url="https://x.example/a"))
    records = {"messages": [message(f"m-{n}", lead=f"lead-{n}", sent=sent)], "sendgrid": events, "replies": []}
    if n % 5 == 0 and n % 11:
        text = "Yes, let's meet on Tuesday at 10." if n % 10 == 0 else "Not interested, please remove me."
        records["replies"].append(reply(f"r-{n}", f"m-{n}", sent + timedelta(days=1), text,
                                        from_email=f"lead-{n}@acme.example", organization_id="org-1"))
    return records


ROUTES = {"messages": "/messages", "sendgrid": "/webhooks/sendgrid", "replies": "/replies"}


def post_until_acknowledged(ports: list[int], path: str, body: list[dict]) -> int:
    """Post to the first replica that acknowledges (a refused connection, an error or a 503 moves
    on to the next; bounded); returns the port that acknowledged."""
    for attempt in range(400):
        port = ports[attempt % len(ports)]
        try:
            answer = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=5,
                                headers={"Authorization": f"Bearer {KEY}"})
            if answer.status_code == 200:
                return port
            assert answer.status_code == 503, answer.text  # anything else is a bug
        except httpx.HTTPError:
            pass  # the replica is down (or died mid-request: not acknowledged, so sent again)
        time.sleep(0.02)
    raise AssertionError(f"{path}: no replica acknowledged after 400 attempts")


@pytest.mark.both_backends
def test_two_replicas_one_killed_then_refresh_labels_every_message_once(s3_landing, tmp_path, warehouse_target):
    home = tmp_path / "fw"
    ports = [free_port(), free_port()]
    procs = [start_flywheel_serve(home, port, **SERVE_ENV) for port in ports]
    progress = [0, 0]
    failures: list[BaseException] = []
    restarted = threading.Event()

    def client(index: int) -> None:
        # replica `index` first, the other when it is down
        order = [ports[index], ports[1 - index]]
        try:
            for n in range(index, UNITS, 2):
                # replica 0's client keeps its last units for the restarted replica (without this the
                # clients could finish on the survivor before the restart answers, on a loaded machine)
                if index == 0 and n >= UNITS - 10 and not restarted.wait(timeout=90):
                    raise AssertionError("the killed replica was not restarted within 90 s")
                for source, records in unit(n).items():
                    if records:
                        post_until_acknowledged(order, ROUTES[source], records)
                progress[index] += 1
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while progress[0] < UNITS // 6:
        assert time.monotonic() < deadline and not failures, failures
        time.sleep(0.01)
    os.kill(procs[0].pid, signal.SIGKILL)  # mid-stream: its open spool segment stays behind
    procs[0].wait()
    time.sleep(0.5)  # its client fails over to the other replica meanwhile
    procs[0] = start_flywheel_serve(home, ports[0], **SERVE_ENV)  # takes over the dead spool, uploads it
    restarted.set()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    assert progress == [UNITS // 2, UNITS // 2]
    for proc in procs:  # a clean stop seals and uploads what is open
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert not list((home / "spool").rglob("*.jsonl*")), "every spooled segment was uploaded"
    writers = {name.rsplit("-", 2)[-2] for name in s3_landing.objects("sendgrid")}
    assert len(writers) == 3, f"objects from the two replicas and the restarted one: {writers}"

    # two refreshes at once, then one more
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "PYTHONPATH": str(REPO), **warehouse_target.env()}
    at_once = [start_refresh(env, dagster_home(home, warehouse_target, i)) for i in (0, 1)]
    for rc, out in [finish(proc) for proc in at_once]:
        assert rc == 0, out[-4000:]
    rc, out = finish(start_refresh(env, dagster_home(home, warehouse_target, 0)))
    assert rc == 0, out[-4000:]

    expected = {source: [r for n in range(UNITS) for r in unit(n)[source]] for source in ROUTES}
    landed = {source: len(s3_landing.objects(source)) for source in ROUTES}
    con = connect(warehouse_target.database, data_path=warehouse_target.data_path, read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT message_id) FROM messages").fetchone() == (UNITS, UNITS)
        stored = con.execute("SELECT sg_event_id, count(*) FROM email_events GROUP BY 1").fetchall()
        assert sorted(stored) == sorted((e["sg_event_id"], 1) for e in expected["sendgrid"])
        replies = con.execute("SELECT reply_id, count(*) FROM replies GROUP BY 1").fetchall()
        assert sorted(replies) == sorted((r["reply_id"], 1) for r in expected["replies"])
        assert con.execute("SELECT count(*), count(DISTINCT reply_id) FROM reply_intents").fetchone() == (
            len(expected["replies"]), len(expected["replies"]))
        ingested = con.execute("SELECT source, count(DISTINCT file_name) FROM landing_files GROUP BY 1").fetchall()
        assert dict(ingested) == landed, "every landed object ingested"
        assert con.execute("SELECT count(*) FROM landing_files").fetchone()[0] == sum(landed.values()), "and once"
        assert con.execute("SELECT count(*) - count(DISTINCT batch_id) FROM ingest_batches").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
        assert con.execute("SELECT count(*), count(DISTINCT message_key) FROM message_state").fetchone() == (
            UNITS, UNITS)
        assert con.execute("SELECT count(*), count(DISTINCT message_id) FROM outcome_labels").fetchone() == (
            UNITS, UNITS)
        # one label run per refresh: the first a full one, each later one folding the batches
        # after the one before (none folded twice, none skipped), the last up to the newest batch
        runs = con.execute("SELECT label_run_id, full_relabel, from_batch, to_batch, folded_events "
                           "FROM label_runs ORDER BY label_run_id").fetchall()
        assert [(run[0], run[1]) for run in runs] == [(1, True), (2, False), (3, False)], runs
        assert [run[2] for run in runs] == [0] + [run[3] for run in runs[:-1]], runs
        assert runs[-1][3] == con.execute("SELECT max(batch_id) FROM ingest_batches").fetchone()[0]
        assert sum(run[4] for run in runs) == len(expected["sendgrid"]), runs
        assert con.execute("SELECT count(*) FROM packed_labels WHERE label_run_id NOT IN "
                           "(SELECT label_run_id FROM label_runs)").fetchone()[0] == 0
        s3_labels = labels(con)
    finally:
        con.close()

    # the same records in a directory landing zone, labelled as of the same time
    local = tmp_path / "landing"
    for source, records in expected.items():
        write_jsonl(local, source, records, name=f"{source}.jsonl")
    baseline = connect(tmp_path / "baseline.duckdb")
    try:
        run_pipeline(baseline, local, as_of=AS_OF)
        assert s3_labels == labels(baseline)
    finally:
        baseline.close()
    assert {row[1] for row in s3_labels} == {True, False} and any(row[5] for row in s3_labels)  # delivered, replied
