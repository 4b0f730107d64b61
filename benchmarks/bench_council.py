"""Benchmark: POST /council's overhead beyond its slowest model.

Starts the local OpenAI-compatible fake (flywheel_pipeline_tests/fakes/openai_server.py) in its
own process on 127.0.0.1 with ``--models`` named models that answer after fixed delays (``--delays`` ms,
repeated as needed; the slowest sets the floor), and `flywheel serve` in a subprocess whose
catalog points at it. Then, for ``--requests`` requests (sequentially, then from ``--clients``
concurrent clients) it times:

* the council: POST /council with all the models, strategy ``judge`` (the heuristic judge
  scores every answer, a pair lands when the margin is clear);
* the baseline: the slowest model asked directly with the openai SDK from this process.

and prints the latency percentiles of both and the overhead (council minus baseline, per
percentile), beside the service's own view: its response time minus its slowest answer's.
Every loop is bounded by ``--requests``.

    python benchmarks/bench_council.py                      # 200 requests
    python benchmarks/bench_council.py --requests 1000 --clients 8
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phase_runner import closed_loop  # noqa: E402  (this directory)
from flywheel_pipeline_tests.fakes.http import free_port, start_flywheel_serve  # noqa: E402
from flywheel_pipeline_tests.fakes.openai_server import FakeOpenAI  # noqa: E402

KEY_ENV = "FLYWHEEL_BENCH_COUNCIL_KEY"
PROMPT = [{"role": "system", "content": "You write short B2B outreach emails."},
          {"role": "user", "content": "Write a cold email to Dana, VP Support at Acme (SaaS, Berlin), about our "
                                      "onboarding playbooks."}]
ANSWERS = [
    "Subject: Faster onboarding for Acme support\n\nHi Dana,\n\nI saw Acme is hiring 12 support engineers in Berlin. "
    "Teams at similar SaaS companies cut onboarding time by 30% with our playbooks.\n\nWould you be open to a 15 "
    "minutes call next week?\n\nBest,\nSam",
    "FREE offer!!! Act now, limited time, 100% GUARANTEED results, click here http://a.example http://b.example",
    "Hello Dana, we sell onboarding playbooks. Let me know if interested.",
]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "mean": statistics.fmean(ordered)}


def run(n: int, clients: int, call) -> tuple[float, list[float]]:
    """``n`` calls of ``call`` from ``clients`` threads: wall seconds and latencies in milliseconds."""
    wall, latencies = closed_loop(n, clients, lambda c: nullcontext(lambda i: call()))
    return wall, [s * 1000 for s in latencies]


def fake_for(names: list[str], delays: list[float]) -> FakeOpenAI:
    fake = FakeOpenAI()
    for i, name in enumerate(names):
        fake.answers[name] = ANSWERS[i % len(ANSWERS)]
        fake.chat_delays[name] = delays[i % len(delays)] / 1000
    return fake


def serve_fake(port: int, names: list[str], delays: list[float]) -> None:
    """The fake in this process, on its own (``--serve-fake PORT``), until terminated."""
    import uvicorn

    uvicorn.run(fake_for(names, delays).app, host="127.0.0.1", port=port, log_level="warning")


def start_fake(names: list[str], delays: str) -> tuple[subprocess.Popen, str]:
    """The fake in a subprocess (so its CPU does not compete with this process's clients)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port), "--models", str(len(names)),
                             "--delays", delays], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/fine_tuning/jobs", timeout=1)
            return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the fake OpenAI server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-fake", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--delays", default="50,100,200", help="each model's fixed delay in ms (comma-separated)")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 64 or not 1 <= args.models <= 8:
        parser.error("--requests 1..100000, --clients 1..64, --models 1..8")
    delays = [float(d) for d in args.delays.split(",")]
    names = [f"bench-model-{i}" for i in range(args.models)]
    if args.serve_fake is not None:
        serve_fake(args.serve_fake, names, delays)
        return
    model_delay = {name: delays[i % len(delays)] for i, name in enumerate(names)}
    slowest = max(names, key=lambda m: model_delay[m])
    os.environ[KEY_ENV] = "sk-bench"
    fake_proc, base_url = start_fake(names, args.delays)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "fw"
        home.mkdir()
        (home / "catalog.yaml").write_text("models:\n" + "".join(
            f"  - {{model_id: {m}, provider: local, input_per_million: 0.1, output_per_million: 0.4, "
            f"task_types: [cold_email], base_url: '{base_url}', api_key_env: {KEY_ENV}}}\n" for m in names))
        port = free_port()
        proc = start_flywheel_serve(home, port, FLYWHEEL_RATE_LIMIT_PER_MINUTE="0", FLYWHEEL_COUNCIL_TIMEOUT_S="10")
        try:
            body = {"task_type": "cold_email", "messages": PROMPT, "models": names, "strategy": "judge"}
            local = threading.local()
            inside: list[float] = []  # the service's own time beyond its slowest answer

            def council() -> None:
                http = getattr(local, "http", None)
                if http is None:
                    http = local.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
                r = http.post("/council", json=body)
                if r.status_code != 200 or r.json()["failed"]:
                    raise RuntimeError(f"council: {r.status_code} {r.text[:300]}")
                answer = r.json()
                inside.append(answer["latency_ms"] - max(c["latency_ms"] for c in answer["candidates"]))

            def direct() -> None:
                client = getattr(local, "openai", None)
                if client is None:
                    client = local.openai = OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0)
                client.chat.completions.create(model=slowest, messages=PROMPT, max_tokens=512)

            run(min(20, args.requests), 1, council)  # warm-up: connections, imports, the catalog
            run(min(20, args.requests), 1, direct)
            print(f"{args.models} models, delays {[model_delay[m] for m in names]} ms, "
                  f"slowest {slowest}; {args.requests} requests")
            for clients in sorted({1, args.clients}):
                _, base = run(args.requests, clients, direct)
                inside.clear()
                wall, lat = run(args.requests, clients, council)
                b, c, i = percentiles(base), percentiles(lat), percentiles(inside)
                print(f"clients={clients}: council {args.requests / wall:.1f} req/s")
                for key in ("p50", "p95", "p99", "mean"):
                    print(f"  {key:>4}: slowest model alone {b[key]:7.1f} ms, council {c[key]:7.1f} ms, "
                          f"overhead {c[key] - b[key]:6.1f} ms (in the service beyond its slowest answer: "
                          f"{i[key]:5.1f} ms)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            fake_proc.terminate()
            fake_proc.wait(timeout=30)


if __name__ == "__main__":
    main()
