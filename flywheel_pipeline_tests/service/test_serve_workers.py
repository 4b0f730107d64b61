"""`flywheel serve --workers N`: several processes on one port. Both answer; a worker killed with
SIGKILL mid-stream is replaced, its open segment sealed by its successor while the live sibling's
stays open; every acknowledged event lands exactly once; /metrics sums over the workers; on an
S3 landing zone each worker has its own spool (``<FLYWHEEL_REPLICA_ID>-w<k>``)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from flywheel_pipeline.core.landing import list_files
from flywheel_pipeline.service.settings import ServiceSettings
from flywheel_pipeline.service.spool import SpoolInUse, open_spool, worker_replicas
from flywheel_pipeline_tests.conftest import T0
from flywheel_pipeline_tests.fakes.http import REPO, free_port, start_flywheel_serve
from flywheel_pipeline_tests.fakes.s3_server import S3Landing, s3_landing  # noqa: F401 (fixture)


def until(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def events(n: int) -> list[dict]:
    return [{"sg_event_id": f"e{n}-{k}", "message_id": f"m-{n}", "event": "delivered",
             "timestamp": int(T0.timestamp()) + n} for k in range(5)]


def worker_pids(proc: subprocess.Popen) -> set[int]:
    """The supervisor's live worker processes (not multiprocessing's resource tracker)."""
    pids = set()
    for child in psutil.Process(proc.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def answering_pids(port: int, want: int) -> set[int]:
    """The pids /healthz names over fresh connections (the kernel spreads them over the workers)."""
    seen: set[int] = set()
    for _ in range(300):
        seen.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["pid"])
        if len(seen) >= want:
            break
    return seen


def open_segments_of(pid: int) -> set[str]:
    return {Path(f.path).name for f in psutil.Process(pid).open_files() if f.path.endswith(".jsonl.open")}


def accepted_total(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    match = re.search(r'^flywheel_events_accepted_total\{source="sendgrid"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)


def test_two_workers_one_killed_lose_nothing_and_metrics_sum_over_them(tmp_path):
    home, port = tmp_path / "fw", free_port()
    # segments stay open for the whole test: what a killed worker leaves is sealed only by recovery
    proc = start_flywheel_serve(home, port, "--workers", "2", FLYWHEEL_SEGMENT_MAX_AGE_S="600",
                                FLYWHEEL_RATE_LIMIT_PER_MINUTE="0")
    acked: list[int] = []
    halt = threading.Event()
    failures: list[BaseException] = []

    def post(first: int) -> None:
        n, attempts = first, 0
        try:
            while not halt.is_set() and attempts < 20_000:
                attempts += 1
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                    while not halt.is_set():
                        try:
                            ok = http.post("/webhooks/sendgrid", json=events(n)).status_code == 200
                        except httpx.HTTPError:
                            n += 1  # its worker died mid-request: not acknowledged; a new connection
                            break
                        if ok:
                            acked.append(n)
                        n += 1
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    try:
        first_pids = worker_pids(proc)
        assert len(first_pids) == 2
        assert answering_pids(port, 2) == first_pids, "both workers answer on the one port"
        senders = [threading.Thread(target=post, args=(c * 1_000_000,)) for c in range(4)]
        for t in senders:
            t.start()
        until(lambda: all(open_segments_of(pid) for pid in first_pids) and len(acked) >= 100,
              "both workers writing, 100 acknowledged requests")
        victim, sibling = sorted(first_pids)
        victims_segments, siblings_segments = open_segments_of(victim), open_segments_of(sibling)
        os.kill(victim, signal.SIGKILL)  # no shutdown hook: its open segment stays open
        until(lambda: len(worker_pids(proc)) == 2 and victim not in worker_pids(proc), "a replacement worker")
        successor = (worker_pids(proc) - {sibling}).pop()
        until(lambda: answering_pids(port, 2) == {sibling, successor}, "the replacement answering")
        # the successor sealed the dead worker's segment; the live sibling's is still open and still its own
        sendgrid = home / "landing" / "sendgrid"
        assert not any((sendgrid / name).exists() for name in victims_segments)
        assert {name[1:-len(".open")] for name in victims_segments} <= {p.name for p in sendgrid.iterdir()}
        assert siblings_segments <= open_segments_of(sibling)
        count = len(acked)
        until(lambda: len(acked) >= count + 100, "100 more acknowledged requests")
        halt.set()
        for t in senders:
            t.join(timeout=30)
        assert not failures, failures
        counted = accepted_total(port)
        assert list(Path(tempfile.gettempdir()).glob(f"flywheel-metrics-{proc.pid}-*")), "the workers' metrics"
    finally:
        halt.set()
        stop(proc)

    lines = [json.loads(line) for f in list_files(home / "landing", "sendgrid")
             for line in f.path.read_text().splitlines()]
    ids = [row["sg_event_id"] for row in lines]
    assert len(ids) == len(set(ids)), "an event was landed twice"
    landed = set(ids)
    lost = [n for n in acked if any(f"e{n}-{k}" not in landed for k in range(5))]
    assert not lost, f"acknowledged requests lost: {lost[:10]}"
    assert not list((home / "landing").rglob(".*.open")), "every segment sealed on the clean stop"
    # counted by all three worker processes (the killed one's counts survive it)
    assert 5 * len(acked) <= counted <= len(ids)
    assert not list(Path(tempfile.gettempdir()).glob(f"flywheel-metrics-{proc.pid}-*")), "the metrics directory removed"


def test_each_worker_takes_its_own_spool_and_a_live_replica_id_is_refused(s3_landing, tmp_path):
    assert worker_replicas("web-a", 1) == ["web-a"]
    assert worker_replicas("web-a", 3) == ["web-a-w0", "web-a-w1", "web-a-w2"]
    assert len(worker_replicas(None, 3)) == 1  # unconfigured: the process's own unique id
    settings = ServiceSettings.from_env({"FLYWHEEL_HOME": str(tmp_path / "unit"), "FLYWHEEL_LANDING": s3_landing.url,
                                         "FLYWHEEL_REPLICA_ID": "web-a", "FLYWHEEL_SERVE_WORKERS": "2"})
    first, second = open_spool(settings), open_spool(settings)
    assert (first.replica, second.replica) == ("web-a-w0", "web-a-w1")
    with pytest.raises(SpoolInUse):
        open_spool(settings)
    assert first.close() and second.close()

    home, port = tmp_path / "fw", free_port()
    proc = start_flywheel_serve(home, port, "--workers", "2", FLYWHEEL_REPLICA_ID="web-a",
                                FLYWHEEL_SEGMENT_MAX_AGE_S="0.5", FLYWHEEL_RATE_LIMIT_PER_MINUTE="0")
    try:
        replicas: set[str] = set()
        for _ in range(300):
            replicas.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["replica_id"])
            if len(replicas) == 2:
                break
        assert replicas == {"web-a-w0", "web-a-w1"}
        env = dict(os.environ, FLYWHEEL_HOME=str(home), FLYWHEEL_REPLICA_ID="web-a", PYTHONPATH=str(REPO))
        again = subprocess.run([sys.executable, "-m", "flywheel_pipeline.cli", "serve", "--port", str(free_port()),
                                "--workers", "2"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "FLYWHEEL_REPLICA_ID=web-a is in use" in again.stderr
        for n in range(40):  # fresh connections: spread over both workers
            assert httpx.post(f"http://127.0.0.1:{port}/webhooks/sendgrid", json=events(n), timeout=10).status_code == 200
    finally:
        stop(proc)
    objects = s3_landing.objects("sendgrid")
    writers = {name.removesuffix(".jsonl").rsplit("-", 1)[-1] for name in objects}
    assert writers and writers <= {"w0", "w1"}, list(objects)
    rows = [json.loads(line) for body in objects.values() for line in body.splitlines()]
    assert sorted(r["sg_event_id"] for r in rows) == sorted(f"e{n}-{k}" for n in range(40) for k in range(5))
    assert not list((home / "spool").rglob("*.jsonl*")), "both workers' spools uploaded on the clean stop"
