"""Benchmark: `flywheel serve` on a directory landing zone against an S3 one, one replica against two.

For each configuration it starts the replicas (`flywheel serve` subprocesses on 127.0.0.1 sharing
one FLYWHEEL_HOME), posts ``--requests`` SendGrid batches of ``--batch`` events from ``--clients``
keep-alive clients spread over the replicas, stops them (SIGTERM: seal and upload), and prints
events/s and latency; then it lists the landing zone and checks every event landed exactly once.
The S3 store is moto's standalone server (``moto.server``, a test server written in Python) in its
own process on 127.0.0.1: it measures the service's S3 path (an fsync per request into the spool,
uploads of sealed segments), not a real object store's speed. Every process shares this machine's
cores, so two replicas show what a second process adds here, not on a second machine.

    python benchmarks/bench_landing.py
    python benchmarks/bench_landing.py --requests 3000 --batch 50 --clients 8 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flywheel_pipeline.landing_store import open_store, s3_client  # noqa: E402
from phase_runner import closed_loop, sendgrid_poster, start_moto  # noqa: E402  (this directory)
from flywheel_pipeline_tests.fakes.http import free_port, start_flywheel_serve  # noqa: E402

BUCKET = "bench-landing"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}
CONFIGS = (("directory", 1), ("directory", 2), ("s3", 1), ("s3", 2))


def batch(run: int, i: int, size: int) -> list[dict]:
    return [{"sg_event_id": f"r{run}-e{i}-{k}", "message_id": f"msg-{i}", "event": "open",
             "timestamp": 1767225600 + i, "email": "lead@example.com"} for k in range(size)]


def load(ports: list[int], bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    """The clients spread over the replicas (client c posts to ports[c % len(ports)])."""
    return closed_loop(len(bodies), clients, lambda c: sendgrid_poster(ports[c % len(ports)], bodies, timeout_s=60))


def run(config: tuple[str, int], run_no: int, args, tmp: Path, s3_endpoint: str | None) -> dict:
    kind, replicas = config
    home = tmp / f"{kind}-{replicas}-{run_no}"
    env = {"FLYWHEEL_LANDING": f"s3://{BUCKET}/{home.name}/" if kind == "s3" else str(home / "landing")}
    if kind == "s3":
        env.update(S3_ENV, AWS_ENDPOINT_URL=s3_endpoint)
    ports = [free_port() for _ in range(replicas)]
    procs = [start_flywheel_serve(home, port, **env) for port in ports]
    bodies = [json.dumps(batch(run_no, i, args.batch)).encode() for i in range(args.requests)]
    try:
        seconds, latencies = load(ports, bodies, args.clients)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    store = open_store(env["FLYWHEEL_LANDING"])
    with store.local_paths(store.list_files("sendgrid")) as local:
        ids = [json.loads(line)["sg_event_id"] for path in local for line in Path(path).read_text().splitlines()]
    events = args.requests * args.batch
    q = statistics.quantiles(latencies, n=100)
    return {"seconds": seconds, "events_per_s": events / seconds, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "exact": len(ids) == events and len(set(ids)) == events, "landed": len(ids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="events per request")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each configuration keeps its best")
    parser.add_argument("--configs", default=",".join(f"{k}:{n}" for k, n in CONFIGS),
                        help="landing:replicas pairs to run, e.g. s3:2,directory:1")
    args = parser.parse_args()
    configs = [(kind, int(n)) for kind, _, n in (c.partition(":") for c in args.configs.split(","))]
    moto_port = free_port()
    moto = start_moto(moto_port)
    endpoint = f"http://127.0.0.1:{moto_port}"
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)  # this process lists the zone with them
    best: dict[tuple[str, int], dict] = {}
    exact = True
    try:
        s3_client().create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory(prefix="flywheel-bench-landing-") as tmp:
            for round_no in range(args.repeat):
                for config in configs:  # interleaved, so a busy moment hits every configuration
                    result = run(config, round_no, args, Path(tmp), endpoint)
                    exact &= result["exact"]
                    print(f"round {round_no + 1}: {config[0]:9s} x{config[1]}  {result['events_per_s']:9.0f} events/s"
                          f"  p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
                          f"landed {result['landed']} {'exactly once' if result['exact'] else 'MISMATCH'}", flush=True)
                    if config not in best or result["events_per_s"] > best[config]["events_per_s"]:
                        best[config] = result
    finally:
        moto.terminate()
        moto.wait(timeout=30)
    print(f"{args.requests} requests x {args.batch} events from {args.clients} clients, best of {args.repeat}:")
    for (kind, replicas), result in best.items():
        print(f"{kind:9s} x{replicas}  {result['events_per_s']:9.0f} events/s  p50 {result['p50_ms']:.1f} ms  "
              f"p99 {result['p99_ms']:.1f} ms")
    for kind in ("directory", "s3"):
        if (kind, 1) in best and (kind, 2) in best:
            ratio = best[(kind, 2)]["events_per_s"] / best[(kind, 1)]["events_per_s"]
            print(f"{kind}: two replicas / one: {ratio:.2f}x")
    for replicas in (1, 2):
        if ("s3", replicas) in best and ("directory", replicas) in best:
            ratio = best[("s3", replicas)]["events_per_s"] / best[("directory", replicas)]["events_per_s"]
            print(f"x{replicas}: s3 / directory: {ratio:.2f}x")
    print(f"every event landed exactly once: {exact}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
