"""The benchmark scripts stay runnable: each runs at a tiny size and prints its figures.

The figures at these sizes mean nothing (docs/benchmarks.md has the real runs); what is
checked is that each script completes, measures every phase and prints its ratio lines.
"""

import re
import subprocess
import sys
from flywheel_pipeline_tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def run_benchmark(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_bench_labelling_prints_every_phase_and_the_ratios():
    out = run_benchmark("bench_labelling.py", "--events", "50000", "--repeat", "2")
    for phase in ("bare", "fold", "full", "write", "incremental", "full_again"):
        assert re.search(rf"^{phase}\s+\d+\.\d+ s\s+peak RSS\s+\d+ MB", out, re.M), (phase, out)
    assert re.search(r"labelling / bare GROUP BY:\s+\d+\.\d+x", out)
    assert re.search(r"each round \(full / bare\):\s+\d+\.\d+x, \d+\.\d+x$", out, re.M)
    assert re.search(r"of which the fold's GROUP BY:\s+\d+\.\d+x", out)
    assert re.search(r"writing the labels alone:\s+\d+\.\d+x", out)
    assert re.search(r"one new day / full relabel:\s+\d+\.\d+", out)
    # every generated event is folded by the full relabel; the fold and write phases measure
    # the same work the full relabel does (one group per message key, one row per label)
    events = int(re.search(r"'email_events': (\d+)", out).group(1))
    assert f"'folded_events': {events}," in out

    def detail(phase: str, key: str) -> int:
        return int(re.search(rf"^{phase}\s.*'{key}': (\d+)", out, re.M).group(1))

    assert detail("fold", "groups") == detail("bare", "groups") > 0
    assert detail("write", "rows") == detail("full", "labelled") > 0


def test_bench_export_compares_against_copy_to_json():
    out = run_benchmark("bench_export.py", "--examples", "2000", "--repeat", "1")
    assert re.search(r"export / COPY TO json: \d+\.\d+x", out), out


def test_bench_experiments_reports_error_rates_and_speed():
    out = run_benchmark("bench_experiments.py", "--experiments", "10", "--days", "5", "--leads", "500",
                        "--assignments", "10000", "--jobs", "1")
    for cell in ("A/A 10/90", "A/A 50/50", "A/A 80/10/10", "+25% 50/50", "-40% 10/90"):
        for method in ("engine", "engine without CUPED", "naive daily fixed test"):
            line = rf"^{re.escape(cell)} +{method} +\d\.\d{{3}} \[\d\.\d{{3}}, \d\.\d{{3}}\]"
            assert re.search(line, out, re.M), (cell, method, out)
    assert re.search(r"CUPED removed \d+\.\d% of the weighted score's variance", out), out
    assert re.search(r"10,000 assignments -> per-arm statistics", out), out


def test_bench_service_lands_every_event_exactly_once():
    out = run_benchmark("bench_service.py", "--requests", "20", "--batch", "5", "--clients", "2")
    assert "landed: 100 events, 100 distinct: exactly once" in out, out


def test_bench_landing_compares_s3_with_a_directory_and_lands_every_event_once():
    out = run_benchmark("bench_landing.py", "--requests", "20", "--batch", "5", "--clients", "2",
                        "--configs", "directory:1,s3:1,s3:2")
    assert re.search(r"^s3\s+x2\s+\d+ events/s", out, re.M), out
    assert re.search(r"^s3: two replicas / one: \d+\.\d+x$", out, re.M), out
    assert re.search(r"^x1: s3 / directory: \d+\.\d+x$", out, re.M), out
    assert out.count("landed 100 exactly once") == 3 and "every event landed exactly once: True" in out, out


def test_bench_ingest_loads_every_event_once_beside_read_json():
    out = run_benchmark("bench_ingest.py", "--events", "2000")
    assert re.search(r"^read_json\s+\d+\.\d+ s\s+[\d,]+ events/s\s+peak RSS\s+\d+ MB.*'rows': 2000\}", out, re.M), out
    # one in ten events is a retried copy: 1,800 distinct events, 200 duplicates, nothing quarantined
    assert "{'lines': 2000, 'accepted': 1800, 'duplicates': 200, 'quarantined': 0}" in out, out
    assert re.search(r"ingest / read_json: \d+\.\d+x the time, \d+\.\d+x the peak memory", out), out


def test_bench_learn_reports_speed_error_rates_and_power():
    out = run_benchmark("bench_learn.py", "--messages", "20000", "--worlds", "10", "--world-size", "5000",
                        "--calibration-worlds", "10", "--calibration-size", "2000")
    assert re.search(r"^drivers over 20,000 messages: \d+\.\d+ s .* peak RSS \d+ MB$", out, re.M), out
    assert re.search(r"^messages per second: [\d,]+$", out, re.M), out
    assert re.search(r"^heuristic judging of 20,000 messages: \d+\.\d s, [\d,]+ messages/s \(20,000 scored, 0 copied; "
                     r"heuristic:email_writing 20,000\), peak RSS \d+ MB$", out, re.M), out
    assert "heuristic judging again (nothing new): " in out and out.count(" s, 0 judged") == 1, out
    for line in (r"null  stratified by organization  worlds with any significant driver: \d\.\d{3} \[",
                 r"null  organization ignored        worlds with any significant driver: \d\.\d{3} \[",
                 r"planted x1\.2 .* power: \d\.\d{3} \[.*mean FDP: \d\.\d{3} \[",
                 r"planted x1\.4 .* power: \d\.\d{3} \[.*mean FDP: \d\.\d{3} \[",
                 r"calibration null  worlds with any trusted judge: \d\.\d{3} \[.*\(promised <= 0\.05\)$",
                 r"calibration planted AUC 0\.\d{3} \(heuristic, reply, all\)  trusted: \d\.\d{3} \[",
                 r"calibration DeLong 95% interval coverage of the true AUC 0\.\d{3}: \d\.\d{3} \["):
        assert re.search(line, out, re.M), (line, out)


def test_bench_scale_labels_on_the_file_backend_and_both_lakes_and_counts_concurrent_writers():
    import json

    import pytest

    from flywheel_pipeline_tests.lake import postgres_reason

    reason = postgres_reason()
    if reason:
        pytest.skip(reason)
    out = run_benchmark("bench_scale.py", "--events", "20000", "--writers", "2", "--writer-files", "1",
                        "--writer-rows", "50", "--linear", "--rounds", "2", "--storage", "40")
    report = json.loads(out[out.index('{\n  "events"'):])  # the full report, printed last
    labelling = report["labelling"]
    runs = (labelling["file"], labelling["ducklake_local"], labelling["ducklake_s3"])
    assert len({run["labels"] for run in runs}) == 1 and runs[0]["labels"] > 0
    assert labelling["ratio_lake_to_file"] > 0 and labelling["ratio_lake_s3_to_file"] > 0
    # the S3 lake's Parquet files are in moto's bucket, and moto's own memory is read
    assert labelling["ducklake_s3"]["data_mb"] > 0 and labelling["ducklake_s3"]["moto_peak_rss_mb"] > 0
    for target in ("file", "lake-local", "lake-s3"):
        assert re.search(rf"^  {target}\s+\d+\.\d+ s\s+peak RSS\s+\d+ MB", out, re.M), (target, out)
    assert re.search(r"lake-s3 / file \d+\.\d+x", out)
    # each lake's email_events read whole, no labelling: the store's own share of the difference
    assert labelling["ratio_scan_s3_to_local"] > 0 and labelling["ducklake_s3"]["scan_s"] > 0
    assert [(w["writers"], w["rows"]) for w in report["writers"]] == [(2, 100)]
    linear = report["linear"]  # 20k and 200k events: a full run and one new day's incremental run each
    assert (linear["small"]["events"], linear["large"]["events"]) == (20000, 200000)
    assert linear["large"]["labelled"] > 5 * linear["small"]["labelled"] > 0
    assert len(linear["small"]["rounds_s"]) == 2 and linear["small"]["seconds"] == min(linear["small"]["rounds_s"])
    assert linear["large"]["incremental_events"] > linear["small"]["incremental_events"] > 0
    assert linear["ratio_10x_events"] > 0 and linear["met"] == (linear["ratio_10x_events"] <= 11)
    assert linear["ratio_bare_10x"] > 0 and linear["large"]["bare_s"] > 0
    storage = report["storage"]  # the demo world's messages as stored
    assert storage["messages"] == 28 * 40 and storage["email_events"] > storage["messages"]
    assert storage["message_record_bytes"] > 500  # prompts and a body, not the generator's few bytes
    assert 0 < storage["lake_bytes_per_message"] and 0 < storage["file_bytes_per_message"]
