"""benchmarks/bench_route.py stays runnable: at a tiny size it measures a world, runs a week under
each strategy and the most expensive model, and times GET /route on a real server."""

import re

from flywheel_pipeline_tests.benchmarks.test_benchmarks import run_benchmark


def test_bench_route_runs_each_strategy_and_times_route():
    out = run_benchmark("bench_route.py", "--history-days", "28", "--messages-per-day", "40", "--rate", "100",
                        "--duration", "1", "--concurrency", "4", "--workers", "2")
    for plan in ("always gpt-4o", "best_quality", "best_cost", "balanced", "fastest"):
        assert re.search(rf"^\| {plan} \| .+ \| [\d,]+ \| \d+\.\d+ \| [\d,]+ \|", out, re.M), (plan, out)
    assert re.search(r"open loop 100 requests/s for 1 s: 100 requests, 0 errors", out), out
    assert re.search(r"^2 worker processes:$", out, re.M), out  # `flywheel serve --workers 2`
    assert re.search(r"closed loop, 4 connections: [\d,]+ requests/s", out), out
    assert re.search(r"route_answer \d+\.\d+ us per call", out)
