"""Benchmark: the default reply classifier (``cue_model``) beside the first one (``rule_based``).

For each classifier: its metrics on the shipped set's measuring split (positive precision and
recall with 95% Wilson intervals, intent and sentiment accuracy, per intent), then its
throughput on a stream of replies (the whole shipped set, quoted mail and signatures
included, cycled to --replies, best of --repeat rounds; the cue_model's one-off training is
timed apart), and the ratios.

    python benchmarks/bench_replies.py                     # 100,000 replies, best of 3
    python benchmarks/bench_replies.py --replies 2000 --repeat 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_pipeline.core.reply_classifier import RuleBasedReplyClassifier  # noqa: E402
from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier, shipped_weights  # noqa: E402
from flywheel_pipeline.core.reply_eval_set import shipped_set  # noqa: E402
from flywheel_pipeline.core.reply_metrics import evaluate, format_evaluation  # noqa: E402


def throughput(classifier, replies: int, repeat: int) -> float:
    rows = shipped_set()
    stream = [rows[i % len(rows)] for i in range(replies)]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for row in stream:
            classifier.classify(subject=row.subject, text=row.text, headers=row.headers)
        best = min(best, time.perf_counter() - started)
    return replies / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    shipped_weights()
    training_s = time.perf_counter() - started
    measuring = shipped_set("measuring")
    results = {}
    for classifier in (CueModelReplyClassifier(), RuleBasedReplyClassifier()):
        evaluation = evaluate(classifier, measuring)
        rate = throughput(classifier, args.replies, args.repeat)
        results[classifier.name] = (evaluation, rate)
        print(format_evaluation(evaluation, title="the measuring split"))
        print(f"throughput {classifier.name:<12} {rate:,.0f} replies/s "
              f"({args.replies:,} replies, best of {args.repeat})")
        print()
    new, new_rate = results["cue_model"]
    old, old_rate = results["rule_based"]
    print(f"cue_model training (once per process, {len(shipped_set('tuning'))} tuning replies): {training_s:.2f} s")
    print(f"positive recall cue_model / rule_based: {new.positive.recall.value:.3f} / "
          f"{old.positive.recall.value:.3f}")
    print(f"intent accuracy cue_model / rule_based: {new.intent_accuracy.value:.3f} / "
          f"{old.intent_accuracy.value:.3f}")
    print(f"throughput cue_model / rule_based: {new_rate / old_rate:.2f}x")
    target = new.positive.precision.value >= 0.9 and new.positive.recall.value >= 0.85
    print(f"target (positive precision >= 0.9, recall >= 0.85): {'met' if target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
