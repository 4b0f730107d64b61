"""Benchmark: the ingestion service's SendGrid endpoint against the landing writer alone.

Starts `flywheel serve` in a subprocess on 127.0.0.1 (a temporary FLYWHEEL_HOME), posts
``--requests`` SendGrid batches of ``--batch`` events from ``--clients`` concurrent clients
(keep-alive connections), and prints requests/s, events/s and latency percentiles. In the
same run it times the baseline: the same lines appended in-process with
``SegmentWriter.append`` (the service's own durable write, no HTTP, no JSON parsing), and
prints the ratio. Afterwards it checks that every event landed exactly once.

    python benchmarks/bench_service.py
    python benchmarks/bench_service.py --requests 2000 --batch 50 --clients 8
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flywheel_pipeline.core.landing import list_files  # noqa: E402
from flywheel_pipeline.service.landing_writer import SegmentWriter  # noqa: E402
from phase_runner import closed_loop, sendgrid_poster  # noqa: E402  (this directory)
from flywheel_pipeline_tests.fakes.http import free_port, start_flywheel_serve  # noqa: E402


def batch(i: int, size: int) -> list[dict]:
    return [{"sg_event_id": f"e{i}-{k}", "message_id": f"msg-{i}", "event": "open", "timestamp": 1767225600 + i,
             "email": "lead@example.com", "sg_machine_open": k % 3 == 0} for k in range(size)]


def baseline(home: Path, requests: int, size: int) -> float:
    writer = SegmentWriter(home / "baseline")
    started = time.perf_counter()
    for i in range(requests):
        writer.append("sendgrid", [json.dumps(e, separators=(",", ":")).encode() for e in batch(i, size)])
    writer.close()
    return time.perf_counter() - started


def load(port: int, requests: int, size: int, clients: int) -> tuple[float, list[float]]:
    bodies = [json.dumps(batch(i, size)).encode() for i in range(requests)]
    return closed_loop(requests, clients, lambda c: sendgrid_poster(port, bodies))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=50, help="events per request")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-service-") as tmp:
        home = Path(tmp)
        base = baseline(home, args.requests, args.batch)
        port = free_port()
        proc = start_flywheel_serve(home, port)
        try:
            seconds, latencies = load(port, args.requests, args.batch, args.clients)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        ids = [json.loads(line)["sg_event_id"] for f in list_files(home / "landing", "sendgrid")
               for line in f.path.read_text().splitlines()]
    events = args.requests * args.batch
    q = statistics.quantiles(latencies, n=100)
    print(f"{args.requests} requests x {args.batch} events from {args.clients} clients over HTTP on 127.0.0.1")
    print(f"service:   {seconds:6.2f} s  {args.requests / seconds:8.0f} requests/s  {events / seconds:9.0f} events/s  "
          f"latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms")
    print(f"baseline:  {base:6.2f} s  {events / base:9.0f} events/s appended in-process by SegmentWriter")
    print(f"service / baseline: {seconds / base:.1f}x")
    exact = len(ids) == events and len(set(ids)) == events
    print(f"landed: {len(ids)} events, {len(set(ids))} distinct: {'exactly once' if exact else 'MISMATCH'}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
