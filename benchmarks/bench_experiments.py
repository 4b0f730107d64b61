"""Benchmark: the experiment engine's error rates under daily looks, its power, and speed.

1. A/A: N experiments (default 1,000), two arms of a 10% rate, 30 daily looks of 200 leads
   per arm per day. Prints how often the always-valid confidence sequence ever excluded 0
   (target <= alpha) beside the naive fixed-horizon test peeked at daily.
2. A/B: the same with a known relative lift (default +20%) in the challenger arm; prints the
   power reached by the last look (sequential and fixed-horizon at the end).
3. Speed: 10M lead assignments in DuckDB aggregated into per-arm sufficient statistics for
   10 arms x 6 metrics, then evaluated (9 challengers against the champion); prints seconds.

    python benchmarks/bench_experiments.py [--experiments 1000] [--assignments 10000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_pipeline.core.stats.frequentist import welch_diff  # noqa: E402
from flywheel_pipeline.core.stats.sequential import sequential_diff  # noqa: E402
from flywheel_pipeline.core.stats.sufficient import ArmStats  # noqa: E402


def simulate(experiments: int, days: int, per_day: int, rate: float, lift: float, alpha: float,
             rng: np.random.Generator) -> tuple[float, float, float]:
    """(share where the sequence ever excluded 0, share where a daily fixed test ever rejected,
    share where the fixed test rejects at the end)."""
    n_star = 2 * days * per_day
    seq_any = fixed_any = fixed_end = 0
    for _ in range(experiments):
        a = rng.binomial(per_day, rate * (1 + lift), days).cumsum()
        b = rng.binomial(per_day, rate, days).cumsum()
        s_hit = f_hit = False
        for d in range(days):
            n = (d + 1) * per_day
            ta, tb = ArmStats.proportion(n, int(a[d])), ArmStats.proportion(n, int(b[d]))
            s_hit |= sequential_diff(ta, tb, alpha=alpha, n_star=n_star).excludes_zero
            reject = welch_diff(ta, tb, alpha=alpha).p_value < alpha
            f_hit |= reject
        seq_any += s_hit
        fixed_any += f_hit
        fixed_end += reject
    return seq_any / experiments, fixed_any / experiments, fixed_end / experiments


def speed(assignments: int) -> tuple[float, float]:
    import duckdb

    from flywheel_pipeline.core.stats.policy import PolicyConfig, decide

    con = duckdb.connect()
    con.execute(f"""
        CREATE TABLE leads AS
        SELECT i AS lead, (hash(i) % 10)::INT AS arm,
               (hash(i, 1) % 100 < 20)::INT AS reply, (hash(i, 2) % 100 < 8)::INT AS meeting,
               (hash(i, 3) % 1000 < 25)::INT AS close, (hash(i, 4) % 100 < 3)::INT AS negative,
               (hash(i, 5) % 1000 < 12)::INT AS unsub, (hash(i, 6) % 100 < 10)::INT AS positive
        FROM range({assignments}) t(i)""")
    started = time.perf_counter()
    rows = con.execute("""
        SELECT arm, count(*), sum(reply), sum(positive), sum(meeting), sum(close), sum(negative), sum(unsub),
               sum(0.5 * close + 0.3 * meeting + 0.2 * reply), sum(power(0.5 * close + 0.3 * meeting + 0.2 * reply, 2))
        FROM leads GROUP BY arm ORDER BY arm""").fetchall()
    aggregated = time.perf_counter() - started
    names = ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
             "unsubscribe_rate")
    arms = {}
    for arm, n, *sums in rows:
        metrics = {name: ArmStats.proportion(int(n), int(sums[i])) for i, name in enumerate(names)}
        metrics["weighted_score"] = ArmStats(int(n), float(sums[6]), float(sums[7]))
        arms[arm] = metrics
    started = time.perf_counter()
    for challenger in range(1, 10):
        stats = {m: {"challenger": arms[challenger][m], "champion": arms[0][m]} for m in arms[0]}
        decide(stats, {"challenger": 1.0, "champion": 1.0}, PolicyConfig(n_star=assignments / 5))
    evaluated = time.perf_counter() - started
    return aggregated, evaluated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=200, help="leads per arm per day")
    parser.add_argument("--lift", type=float, default=0.2, help="relative lift in the A/B runs")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--assignments", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    t = time.perf_counter()
    seq, fixed_peeked, fixed_end = simulate(args.experiments, args.days, args.per_day, 0.10, 0.0, args.alpha, rng)
    print(f"A/A, {args.experiments} experiments x {args.days} daily looks ({time.perf_counter() - t:.1f}s):")
    print(f"  always-valid sequence, false positives over all looks: {seq:.3f}  (target <= {args.alpha}) "
          f"{'OK' if seq <= args.alpha else 'MISSED'}")
    print(f"  fixed-horizon test peeked daily:                      {fixed_peeked:.3f}")
    print(f"  fixed-horizon test at the planned end only:           {fixed_end:.3f}")
    t = time.perf_counter()
    seq, fixed_peeked, fixed_end = simulate(args.experiments, args.days, args.per_day, 0.10, args.lift, args.alpha, rng)
    print(f"A/B with a +{args.lift:.0%} relative lift ({time.perf_counter() - t:.1f}s):")
    print(f"  power of the always-valid sequence by the last look:  {seq:.3f}")
    print(f"  power of the fixed-horizon test at the end:           {fixed_end:.3f}")
    aggregated, evaluated = speed(args.assignments)
    print(f"speed: {args.assignments:,} assignments -> per-arm statistics for 10 arms x 7 metrics in "
          f"{aggregated:.2f}s; 9 challengers x 7 metrics evaluated in {evaluated:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
