"""Benchmark: routing strategies.

1. **The demo world under each strategy.** The demo world's models (gpt-4o-mini, gpt-4.1-mini and
   the fine-tune ft:gpt-4o-mini...:flywheel-v1 from day 30, hidden quality 1.00 / 1.12 / 1.30) plus
   two the demo does not use: gpt-4o (quality 1.15, the most expensive) and gpt-4.1-nano (quality
   0.85, the cheapest); each message priced from its tokens and the catalog (``record_cost=False``)
   and each model with its catalog latency. ``--history-days`` of mixed traffic are ingested,
   labelled and measured (cost_analysis, model_choice_stats: the real SQL); each strategy then picks
   a model per organization and task type (candidates: the world's five models), and the same world
   (same seed, same leads, same per-message randomness) is run forward one week with the outreach app
   following that choice, against always using the most expensive model. Printed per strategy: the
   week's spend (tokens at catalog prices), positive replies (the world's own outcomes, counted
   three weeks later), cost per positive reply, and the saving against the most expensive model.
2. **GET /route latency and throughput.** `flywheel serve --workers N` in a subprocess on
   127.0.0.1 with API keys (for each N in ``--workers``, default 1 and 2), the measured
   model_stats.json published; benchmarks/http_load.py (a light keep-alive HTTP/1.1 client) sends
   ``--rate`` requests/s for ``--duration`` seconds (open loop: latency counts from each request's
   scheduled time, so a stalled server is not hidden), every request with a strategy (the four in
   turn) and a random lead; then closed loops with ``--concurrency`` connections on /route and on
   /healthz (the service's floor). Before them, ``route_answer`` in process (no HTTP). Bounded:
   every request has a 5 s timeout.

    python benchmarks/bench_route.py                      # full size
    python benchmarks/bench_route.py --history-days 35 --messages-per-day 150 --rate 200 --duration 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from flywheel_pipeline.core import landing as landing_zone  # noqa: E402
from flywheel_pipeline.core.catalog import load_catalog  # noqa: E402
from flywheel_pipeline.core.label_policy import LabelPolicy  # noqa: E402
from flywheel_pipeline.core.model_choice import STRATEGIES  # noqa: E402
from flywheel_pipeline.core.model_snapshot import build_snapshot  # noqa: E402
from flywheel_pipeline.routing import choose_model, write_model_stats  # noqa: E402
from flywheel_pipeline.simulator import DEFAULT_MODELS, SimConfig, SimModel, simulate  # noqa: E402
from flywheel_pipeline.warehouse.cost_analysis import build_cost_analysis, registry_models  # noqa: E402
from flywheel_pipeline.warehouse.ingest import attribute_unlinked, ingest_source  # noqa: E402
from flywheel_pipeline.warehouse.labels import refresh_labels  # noqa: E402
from flywheel_pipeline.warehouse.model_stats import (build_model_choice_stats, cost_analysis_rows,  # noqa: E402
                                                     recent_executions, stats_rows, task_tokens)
from flywheel_pipeline.warehouse.reply_intents import classify_new_replies  # noqa: E402
from flywheel_pipeline.warehouse.schema import connect  # noqa: E402
from flywheel_pipeline_tests.fakes.http import free_port, start_flywheel_serve  # noqa: E402
from http_load import closed_loop, get_request, open_loop, pct  # noqa: E402  (this directory)

SEED = 7
TASKS = ("cold_email", "follow_up")
POSITIVE = ("meeting_request", "interested")
OUTCOME_DAYS = 21  # outcomes of the measured week are counted this long after it


def world_models() -> tuple[SimModel, ...]:
    catalog = load_catalog()

    def latency(model_id: str) -> float:
        entry = catalog.get(model_id)
        return float(entry.typical_latency_ms) if entry and entry.typical_latency_ms else 1500.0
    demo = tuple(SimModel(m.model_id, m.model_version, m.quality, m.share, m.start_day, m.ab_group,
                          latency(m.model_id)) for m in DEFAULT_MODELS)
    return demo + (SimModel("gpt-4o", "1.0.0", 1.15, 0.15, 0, "control", latency("gpt-4o")),
                   SimModel("gpt-4.1-nano", "1.0.0", 0.85, 0.15, 0, "control", latency("gpt-4.1-nano")))


def config(end: date, days: int, epoch: date, per_day: int, routing=()) -> SimConfig:
    return SimConfig(seed=SEED, days=days, end=end, epoch=epoch, messages_per_day=per_day, leads_per_org=3000,
                     models=world_models(), routing_history=tuple(routing), record_cost=False, feedback_rate=0.0)


def measure_history(work: Path, start: date, days: int, per_day: int) -> tuple[dict, float]:
    landing = work / "history" / "landing"
    t = time.perf_counter()
    simulate(landing, config(start + timedelta(days=days), days, start, per_day))
    con = connect(work / "history" / "warehouse.duckdb")
    policy = LabelPolicy()
    for source in landing_zone.SOURCES:
        ingest_source(con, landing, source)
    attribute_unlinked(con, "crm_events", policy)
    attribute_unlinked(con, "replies", policy)
    classify_new_replies(con)
    refresh_labels(con, policy, as_of=datetime.combine(start + timedelta(days=days), dtime(0), tzinfo=timezone.utc))
    catalog = load_catalog().with_registry(registry_models(con))
    build_cost_analysis(con, catalog)
    build_model_choice_stats(con)
    snapshot = build_snapshot(stats_rows(con), generated_at=datetime.now(timezone.utc).isoformat(),
                              registry_models=registry_models(con), tokens=task_tokens(con),
                              costs=cost_analysis_rows(con), executions=recent_executions(con, 200))
    con.close()
    return snapshot, time.perf_counter() - t


def week_outcomes(landing: Path, first: date, last: date) -> dict[str, float]:
    """Spend (tokens at catalog prices) and positive replies of the messages sent in [first, last]."""
    catalog = load_catalog()
    spend, messages, by_model, sent = 0.0, 0, defaultdict(int), set()
    for f in landing_zone.list_files(landing, "messages"):
        day = date.fromisoformat(f.name[-len("YYYY-MM-DD.jsonl"):-len(".jsonl")])
        if not first <= day <= last:
            continue
        for line in f.path.read_text().splitlines():
            m = json.loads(line)
            price = catalog.price(m["model_id"])
            spend += float(m["prompt_tokens"] * price.input_per_million + m["completion_tokens"] * price.output_per_million) / 1e6
            messages += 1
            by_model[m["model_id"]] += 1
            sent.add(m["message_id"])
    positive = 0
    pattern = re.compile(r"^reply-(msg-\d{8}-\d{5})-(\w+)$")
    for f in landing_zone.list_files(landing, "replies"):
        for line in f.path.read_text().splitlines():
            match = pattern.match(json.loads(line)["reply_id"])
            if match and match.group(1) in sent and match.group(2) in POSITIVE:
                positive += 1
    return {"messages": messages, "spend": spend, "positive": positive, "models": dict(by_model)}


def routing_for(picks: dict[tuple[str, str], str]) -> dict:
    return {"version": 1, "default_model": None, "families": {
        f"flywheel-{org}-{task}": {"experiment_id": f"bench-{org}-{task}", "organization_id": org, "task_type": task,
                                   "arms": [{"model_id": model, "version": "1.0.0", "ab_group": "champion",
                                             "traffic_pct": 100.0}]}
        for (org, task), model in picks.items()}}


def simulate_week(work: Path, name: str, picks: dict, start: date, history_days: int, per_day: int) -> dict:
    week_start = start + timedelta(days=history_days)
    end = week_start + timedelta(days=7 + OUTCOME_DAYS)
    landing = work / name / "landing"
    simulate(landing, config(end, history_days + 7 + OUTCOME_DAYS, start, per_day,
                             routing=[(week_start, routing_for(picks))]))
    return week_outcomes(landing, week_start, week_start + timedelta(days=6))


def strategy_world(work: Path, history_days: int, per_day: int) -> tuple[dict, list[str]]:
    start = date(2026, 6, 1)
    snapshot, seconds = measure_history(work, start, history_days, per_day)
    lines = [f"history: {history_days} days x {per_day} messages/day measured in {seconds:.1f} s"]
    models = [m.model_id for m in world_models()]
    orgs = sorted(o for o in snapshot["models"] if o != "*")
    catalog = load_catalog()
    most_expensive = max(models, key=lambda m: catalog.price(m).output_per_million + catalog.price(m).input_per_million
                         if catalog.price(m) else -1)
    runs: dict[str, dict] = {}
    plans: dict[str, dict] = {f"always {most_expensive}": {(o, t): most_expensive for o in orgs for t in TASKS}}
    for strategy in STRATEGIES:
        plans[strategy] = {(o, t): choose_model("bench", o, t, table={"families": {}}, strategy=strategy,
                                                 candidates=models, snapshot=snapshot)["model_id"]
                           for o in orgs for t in TASKS}
    for name, picks in plans.items():
        t = time.perf_counter()
        runs[name] = simulate_week(work, re.sub(r"\W", "_", name), picks, start, history_days, per_day)
        runs[name]["picks"] = sorted(set(picks.values()))
        runs[name]["seconds"] = time.perf_counter() - t
    base = runs[f"always {most_expensive}"]
    lines.append("| plan | models picked | messages | spend USD/week | positive replies | USD per positive reply | "
                 "spend vs most expensive | positive replies vs most expensive |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        per = r["spend"] / r["positive"] if r["positive"] else float("inf")
        lines.append(f"| {name} | {', '.join(r['picks'])} | {r['messages']:,} | {r['spend']:.4f} | {r['positive']:,} | "
                     f"{per:.6f} | {r['spend'] / base['spend'] - 1:+.1%} | {r['positive'] / base['positive'] - 1:+.1%} |")
    return snapshot, lines


def in_process(snapshot: dict) -> str:
    """The strategy's own cost per request, without HTTP: route_answer as the service calls it."""
    from flywheel_pipeline.core.model_choice import Constraints
    from flywheel_pipeline.routing import route_answer, routing_catalog

    catalog = routing_catalog(snapshot)
    rng = random.Random(2)
    n = 20_000
    t = time.perf_counter()
    for i in range(n):
        route_answer(f"lead-{rng.randrange(3000)}", "org_01", TASKS[i % 2], table={"families": {}},
                     strategy=STRATEGIES[i % 4], candidates=None, constraints=Constraints(), snapshot=snapshot,
                     catalog=catalog, fallbacks=3, tolerance=0.1)
    per = (time.perf_counter() - t) / n * 1e6
    return f"in process (no HTTP): route_answer {per:.1f} us per call over {n:,} calls"


def route_latency(work: Path, snapshot: dict, rate: int, duration: float, concurrency: int, workers: int) -> list[str]:
    """GET /route on `flywheel serve --workers N`: the open loop at ``rate``, then closed loops on
    /route and on /healthz (no routing: the service's floor with the same number of processes)."""
    home = work / "serve"
    write_model_stats(snapshot, home / "model_stats.json")
    port = free_port()
    proc = start_flywheel_serve(home, port, "--workers", str(workers), FLYWHEEL_API_KEYS="org_01=k1,org_02=k2,org_03=k3",
                                FLYWHEEL_RATE_LIMIT_PER_MINUTE="0")
    rng = random.Random(1)
    queries = [{"lead_id": f"org_01-lead-{rng.randrange(3000):05d}", "task_type": rng.choice(TASKS),
                "strategy": STRATEGIES[i % len(STRATEGIES)]} for i in range(4000)]
    headers = {"Authorization": "Bearer k1"}
    routes = [get_request("/route", q, headers) for q in queries]
    health = [get_request("/healthz")]
    try:
        first = httpx.get(f"http://127.0.0.1:{port}/route", params=queries[0], headers=headers).json()
        assert first["source"] == "strategy", first
        asyncio.run(closed_loop(port, routes, 2000, 8))  # warm up (every worker)
        o = asyncio.run(open_loop(port, routes, rate, duration))
        n = max(4000, int(rate * duration / 2))
        c = asyncio.run(closed_loop(port, routes, n, concurrency))
        h = asyncio.run(closed_loop(port, health, n, concurrency))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    met = pct(o["latencies"], .99) < 10 and o["throughput"] >= 0.98 * rate and rate >= 1000 and not o["errors"]
    return [f"{workers} worker process{'es' if workers > 1 else ''}:",
            f"  open loop {rate} requests/s for {duration:g} s: {o['requests']:,} requests, {o['errors']} errors, "
            f"achieved {o['throughput']:,.0f}/s; latency from the scheduled time p50 {pct(o['latencies'], .5):.2f} ms, "
            f"p99 {pct(o['latencies'], .99):.2f} ms, max {max(o['latencies']) * 1000:.1f} ms; from sending "
            f"p50 {pct(o['service'], .5):.2f} ms, p99 {pct(o['service'], .99):.2f} ms",
            f"  closed loop, {concurrency} connections: {c['throughput']:,.0f} requests/s, latency p50 "
            f"{pct(c['latencies'], .5):.2f} ms, p99 {pct(c['latencies'], .99):.2f} ms; the same on /healthz (no "
            f"routing, the service's floor): {h['throughput']:,.0f} requests/s, p50 {pct(h['latencies'], .5):.2f} ms, "
            f"p99 {pct(h['latencies'], .99):.2f} ms",
            f"  (target: p99 < 10 ms at 1,000 requests/s; {'met' if met else 'NOT met'} in this run)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history-days", type=int, default=56)
    parser.add_argument("--messages-per-day", type=int, default=500)
    parser.add_argument("--rate", type=int, default=1000, help="requests/s of the open loop")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the open loop")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the closed loop")
    parser.add_argument("--workers", default="1,2", help="`flywheel serve --workers` counts to measure, e.g. 1,2")
    parser.add_argument("--skip-world", action="store_true", help="only the /route latency (on a smaller world)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        work = Path(tmp)
        if args.skip_world:
            snapshot, _ = measure_history(work, date(2026, 6, 1), 35, 150)
            lines = []
        else:
            snapshot, lines = strategy_world(work, args.history_days, args.messages_per_day)
        for line in lines:
            print(line, flush=True)
        print(in_process(snapshot), flush=True)
        for workers in (int(w) for w in args.workers.split(",")):
            for line in route_latency(work, snapshot, args.rate, args.duration, args.concurrency, workers):
                print(line, flush=True)


if __name__ == "__main__":
    main()
