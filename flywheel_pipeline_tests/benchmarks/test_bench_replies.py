"""bench_replies.py stays runnable: at a tiny size it prints both classifiers' metrics,
throughput and the ratios (the real figures are in docs/benchmarks.md)."""

import re

from flywheel_pipeline_tests.benchmarks.test_benchmarks import run_benchmark


def test_bench_replies_compares_cue_model_with_rule_based():
    out = run_benchmark("bench_replies.py", "--replies", "500", "--repeat", "1")
    for name in ("cue_model", "rule_based"):
        assert re.search(rf"^classifier {name}:\S+ on the measuring split: \d+ replies", out, re.M), out
        assert re.search(rf"^throughput {name}\s+[\d,]+ replies/s \(500 replies, best of 1\)", out, re.M), out
    assert re.search(r"^positive precision \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", out, re.M)
    assert re.search(r"throughput cue_model / rule_based: \d+\.\d\dx", out)
    assert "target (positive precision >= 0.9, recall >= 0.85): met" in out
