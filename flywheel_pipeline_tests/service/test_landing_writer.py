"""The durable landing writer: rotation, recovery, and kill -9 in the middle of a stream."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flywheel_pipeline.core.landing import list_files
from flywheel_pipeline.service.landing_writer import SegmentWriter, recover
from flywheel_pipeline_tests.conftest import REPO

WRITER = """
import json, sys
from pathlib import Path
from flywheel_pipeline.service.landing_writer import SegmentWriter
w = SegmentWriter(Path(sys.argv[1]), max_bytes=4096, max_age_s=3600, fsync_interval_s=0.05)
i = 0
while True:
    w.append("sendgrid", [json.dumps({"sg_event_id": f"e{i}-{k}", "n": i}).encode() for k in range(3)])
    print(i, flush=True)   # the acknowledgement: only after append returned
    i += 1
"""


def read_all(landing: Path) -> list[dict]:
    rows = []
    for f in list_files(landing, "sendgrid"):
        rows += [json.loads(line) for line in f.path.read_text().splitlines()]
    return rows


def test_rotation_makes_complete_visible_files_in_order(tmp_path):
    w = SegmentWriter(tmp_path, max_bytes=50, max_age_s=3600)
    for i in range(20):
        w.append("sendgrid", [json.dumps({"n": i}).encode()])
    assert all(not f.name.startswith(".") for f in list_files(tmp_path, "sendgrid"))
    w.close()
    assert [r["n"] for r in read_all(tmp_path)] == list(range(20))
    assert not list((tmp_path / "sendgrid").glob(".*"))
    assert len(list_files(tmp_path, "sendgrid")) > 1


def test_recovery_drops_a_torn_line_and_seals_the_rest(tmp_path):
    # what a process killed mid-write leaves: an open segment nobody holds, its last line torn
    (tmp_path / "crm").mkdir()
    open_file = tmp_path / "crm" / ".crm-00000000000000000001-dead0000.jsonl.open"
    open_file.write_bytes(b'{"event_id": "a"}\n{"event_id": "b"}\n{"event_id": "c", "trunc')
    sealed = recover(tmp_path)
    assert len(sealed) == 1 and sealed[0].read_text().splitlines() == ['{"event_id": "a"}', '{"event_id": "b"}']
    assert sealed[0].name == "crm-00000000000000000001-dead0000.jsonl" and not open_file.exists()


def test_recovery_leaves_a_live_writers_open_segment_alone(tmp_path):
    """Another live process writing the same landing zone (`flywheel serve --workers N`: a worker
    restarted beside a running sibling) keeps its open segment: recover() only seals segments
    whose writer holds no lock on them, that is, whose process is gone."""
    live = SegmentWriter(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    live.append("crm", [b'{"event_id": "a"}'])
    open_file = next((tmp_path / "crm").glob(".*.open"))
    assert recover(tmp_path) == [] and open_file.exists()
    live.append("crm", [b'{"event_id": "b"}'])  # still writing the same segment
    sealed = live.close()
    assert len(sealed) == 1 and sealed[0].read_text().splitlines() == ['{"event_id": "a"}', '{"event_id": "b"}']
    assert recover(tmp_path) == []
    # a segment being created is locked before it gets its .open name; one a dead process left
    # unnamed is empty and removed, one a live process holds is left to it
    dead = tmp_path / "crm" / ".crm-00000000000000000002-dead0000.jsonl.open.new"
    dead.touch()
    held = tmp_path / "crm" / ".crm-00000000000000000003-live0000.jsonl.open.new"
    fd = os.open(held, os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert recover(tmp_path) == [] and not dead.exists() and held.exists()
    finally:
        os.close(fd)


def test_kill_minus_nine_loses_no_acknowledged_event_and_duplicates_none(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    acknowledged = -1
    deadline = time.monotonic() + 20
    while acknowledged < 400 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 400
    recover(tmp_path)
    rows = read_all(tmp_path)
    ids = [r["sg_event_id"] for r in rows]
    assert len(ids) == len(set(ids))  # nothing written twice
    seen = {r["n"] for r in rows}
    assert set(range(acknowledged + 1)) <= seen  # every acknowledged request is there
    assert [r["n"] for r in rows] == sorted(r["n"] for r in rows)  # order kept
    assert not list((tmp_path / "sendgrid").glob(".*"))
