"""Benchmark: the experiment engine's error rates, power and speed where the flywheel runs.

A simulated world like the outreach the flywheel serves: about 10,000 leads per experiment
arriving over 30 days (one look a day, cumulative per-arm sufficient statistics, exactly the
inputs ``ab_test_results`` gives ``decide()``), rare outcomes (reply 5%, meeting 1%, deal 0.3%,
negative reply 1.5%, unsubscribe 0.5%), leads that differ (a lognormal affinity, sigma 0.5, as
the demo world's leads), and a pre-experiment covariate per lead for CUPED (its human opens
and replies on three earlier messages). Arms are drawn at random with the configured shares.

Cells: A/A, +25% (reply, meeting and deal rates x1.25) and -40% (x0.6) at 10/90 and 50/50, and
A/A and +25% (the first challenger) at 80/10/10. The planned size of the step (N*) is the
traffic of the 30 days. For each cell it prints the share of experiments ever promoted and
ever rolled back, each with its 95% Wilson interval, and the median day of the verdict, for:
* the engine (``decide()``: pooled-variance tests, confidence sequences plus one test at the
  planned end, CUPED);
* the engine without CUPED (``PolicyConfig(cuped=False)``);
* a naive fixed-horizon Welch test of the weighted score peeked at daily (two-sided alpha:
  promote when higher, roll back when lower).
Targets: A/A rollbacks <= alpha in every cell, A/A promotions <= alpha at 50/50; -40% at 10/90
rolled back in most experiments and almost never moved on; +25% at 50/50 promoted at least 30%
of the time, more with CUPED. Then speed: 10M assignments -> per-arm statistics for 10 arms in
DuckDB -> decide() for 9 challengers against the champion.

    python benchmarks/bench_experiments.py [--experiments 1000] [--assignments 10000000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_pipeline.core.stats.frequentist import wilson_interval  # noqa: E402
from flywheel_pipeline.core.stats.policy import CONTROL, PRIMARY, PolicyConfig, decide  # noqa: E402
from flywheel_pipeline.core.stats.sufficient import ArmStats  # noqa: E402

RATES = {"reply": 0.05, "meeting_given_reply": 0.2, "deal_given_meeting": 0.3, "negative": 0.015, "unsub": 0.005}
AFFINITY_SIGMA = 0.5  # the demo world's spread of leads' engagement (--affinity-sigma)
METHODS = ("engine", "engine without CUPED", "naive daily fixed test")


@dataclass(frozen=True)
class Cell:
    name: str
    shares: tuple[float, ...]  # champion first
    lifts: tuple[float, ...]  # per challenger: multiplier of reply, meeting and deal rates


CELLS = (
    Cell("A/A 10/90", (90, 10), (1.0,)),
    Cell("A/A 50/50", (50, 50), (1.0,)),
    Cell("A/A 80/10/10", (80, 10, 10), (1.0, 1.0)),
    Cell("+25% 10/90", (90, 10), (1.25,)),
    Cell("+25% 50/50", (50, 50), (1.25,)),
    Cell("+25% 80/10/10", (80, 10, 10), (1.25, 1.0)),
    Cell("-40% 10/90", (90, 10), (0.6,)),
    Cell("-40% 50/50", (50, 50), (0.6,)),
)


def daily_sums(cell: Cell, experiments: int, days: int, per_day: int, sigma: float,
               rng: np.random.Generator) -> np.ndarray:
    """Per experiment, day and arm: n, sum_y, sum_y2, sum_x, sum_x2, sum_xy, negatives, unsubscribes
    (shape experiments x days x arms x 8), y the weighted score, x the covariate."""
    arms = len(cell.shares)
    size = experiments * days * per_day
    arm = rng.choice(arms, size=size, p=np.asarray(cell.shares) / sum(cell.shares))
    affinity = rng.lognormal(-sigma ** 2 / 2, sigma, size)
    lift = np.concatenate([[1.0], cell.lifts])[arm]
    reply = rng.random(size) < np.minimum(1, RATES["reply"] * affinity * lift)
    meeting = reply & (rng.random(size) < RATES["meeting_given_reply"])
    deal = meeting & (rng.random(size) < RATES["deal_given_meeting"])
    y = 0.2 * reply + 0.3 * meeting + 0.5 * deal
    x = (rng.binomial(3, np.minimum(0.9, 0.3 * affinity)) + rng.binomial(3, np.minimum(1, RATES["reply"] * affinity))
         ).astype(float)
    negative = rng.random(size) < RATES["negative"]
    unsub = rng.random(size) < RATES["unsub"]
    index = (np.repeat(np.arange(experiments * days), per_day) * arms + arm)
    bins = experiments * days * arms
    columns = [np.ones(size), y, y * y, x, x * x, x * y, negative, unsub]
    out = np.stack([np.bincount(index, weights=c, minlength=bins) for c in columns], axis=-1)
    return out.reshape(experiments, days, arms, 8)


def arm_names(cell: Cell) -> list[str]:
    return [CONTROL] + (["challenger"] if len(cell.shares) == 2 else
                        [f"challenger_{k}" for k in range(1, len(cell.shares))])


def stats_at(cum: np.ndarray, names: list[str], cuped: bool) -> dict[str, dict[str, ArmStats]]:
    """What ab_test_results hands decide(): per metric and arm, cumulative sufficient statistics."""
    out: dict[str, dict[str, ArmStats]] = {PRIMARY: {}, "negative_reply_rate": {}, "unsubscribe_rate": {}}
    for a, name in enumerate(names):
        n, sy, sy2, sx, sx2, sxy, neg, uns = cum[a]
        n = int(n)
        out[PRIMARY][name] = ArmStats(n, sy, sy2, sx, sx2, sxy) if cuped else ArmStats(n, sy, sy2)
        out["negative_reply_rate"][name] = ArmStats.proportion(n, int(neg))
        out["unsubscribe_rate"][name] = ArmStats.proportion(n, int(uns))
    return out


def naive(cum: np.ndarray, alpha: float) -> str:
    """Welch two-sided test of the weighted score, first challenger against the champion."""
    n_c, sy_c, sy2_c = cum[0, :3]
    n_t, sy_t, sy2_t = cum[1, :3]
    if min(n_c, n_t) < 2:
        return "continue"
    from scipy import special
    mc, mt = sy_c / n_c, sy_t / n_t
    vc, vt = max(0, (sy2_c - sy_c ** 2 / n_c) / (n_c - 1)), max(0, (sy2_t - sy_t ** 2 / n_t) / (n_t - 1))
    se2 = vc / n_c + vt / n_t
    if se2 <= 0:
        return "continue"
    df = se2 ** 2 / ((vc / n_c) ** 2 / (n_c - 1) + (vt / n_t) ** 2 / (n_t - 1))
    z = (mt - mc) / math.sqrt(se2)
    if 2 * special.stdtr(df, -abs(z)) < alpha:
        return "promote" if z > 0 else "rollback"
    return "continue"


def run_cell(args: tuple[Cell, int, int, int, float, float, int]) -> tuple[dict[str, list[tuple[str, int]]], float]:
    """Per method, per experiment: the first verdict of the first challenger (or the family
    verdict for A/A with several) and its day, ('continue', days) when none; and the median
    share of the weighted score's variance CUPED removed at the last look."""
    cell, experiments, days, per_day, alpha, sigma, seed = args
    rng = np.random.default_rng(seed)
    names = arm_names(cell)
    weights = {name: float(s) for name, s in zip(names, cell.shares, strict=True)}
    results: dict[str, list[tuple[str, int]]] = {m: [] for m in METHODS}
    reductions = []
    chunk = 100
    for start in range(0, experiments, chunk):
        sums = daily_sums(cell, min(chunk, experiments - start), days, per_day, sigma, rng).cumsum(axis=1)
        n_star = float(sums[0, -1, :, 0].sum())  # the traffic of the planned days
        for e in range(sums.shape[0]):
            for method in METHODS:
                verdict, day = "continue", days
                for d in range(days):
                    if method == "naive daily fixed test":
                        v = naive(sums[e, d], alpha)
                    else:
                        cfg = PolicyConfig(alpha=alpha, n_star=n_star, cuped=method == "engine")
                        decision = decide(stats_at(sums[e, d], names, method == "engine"), weights, cfg)
                        v = _cell_verdict(decision, cell, names)
                        if method == "engine" and (v != "continue" or d == days - 1) and decision.variance_reduction:
                            reductions.append(decision.variance_reduction)
                    if v != "continue":
                        verdict, day = v, d + 1
                        break
                results[method].append((verdict, day))
    return results, float(np.median(reductions)) if reductions else 0.0


def _cell_verdict(decision, cell: Cell, names: list[str]) -> str:
    """A/A with several challengers: any rollback (or promotion) is a wrong verdict; otherwise the
    first challenger's verdict."""
    verdicts = decision.arms
    if all(lift == 1.0 for lift in cell.lifts) and len(verdicts) > 1:
        for wrong in ("rollback", "promote"):
            if wrong in verdicts.values():
                return wrong
        return "inconclusive" if "inconclusive" in verdicts.values() else "continue"
    return verdicts[names[1]]


def summarize(outcomes: list[tuple[str, int]], verdict: str) -> str:
    k = sum(v == verdict for v, _ in outcomes)
    n = len(outcomes)
    low, high = wilson_interval(k, n)
    days = [d for v, d in outcomes if v == verdict]
    median = f"day {np.median(days):4.1f}" if days else "    -   "
    return f"{k / n:6.3f} [{low:.3f}, {high:.3f}] {median}"


def speed(assignments: int) -> tuple[float, float]:
    import duckdb

    con = duckdb.connect()
    con.execute(f"""
        CREATE TABLE leads AS
        SELECT i AS lead, (hash(i) % 10)::INT AS arm,
               (hash(i, 1) % 100 < 20)::INT AS reply, (hash(i, 2) % 100 < 8)::INT AS meeting,
               (hash(i, 3) % 1000 < 25)::INT AS close, (hash(i, 4) % 100 < 3)::INT AS negative,
               (hash(i, 5) % 1000 < 12)::INT AS unsub, (hash(i, 6) % 100 < 10)::INT AS positive,
               (hash(i, 7) % 4)::DOUBLE AS pre
        FROM range({assignments}) t(i)""")
    started = time.perf_counter()
    rows = con.execute("""
        WITH s AS (SELECT *, 0.5 * close + 0.3 * meeting + 0.2 * reply AS score FROM leads)
        SELECT arm, count(*), sum(reply), sum(positive), sum(meeting), sum(close), sum(negative), sum(unsub),
               sum(score), sum(score * score), sum(pre), sum(pre * pre), sum(pre * score)
        FROM s GROUP BY arm ORDER BY arm""").fetchall()
    aggregated = time.perf_counter() - started
    names = ("reply_rate", "positive_reply_rate", "meeting_rate", "close_rate", "negative_reply_rate",
             "unsubscribe_rate")
    arms = {}
    for arm, n, *sums in rows:
        metrics = {name: ArmStats.proportion(int(n), int(sums[i])) for i, name in enumerate(names)}
        metrics[PRIMARY] = ArmStats(int(n), *map(float, sums[6:11]))
        arms[CONTROL if arm == 0 else f"challenger_{arm}"] = metrics
    stats = {m: {a: arms[a][m] for a in arms} for m in arms[CONTROL]}
    started = time.perf_counter()
    decide(stats, {a: 1.0 for a in arms}, PolicyConfig(n_star=assignments))
    evaluated = time.perf_counter() - started
    return aggregated, evaluated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=1000, help="experiments per cell")
    parser.add_argument("--days", type=int, default=30, help="daily looks")
    parser.add_argument("--leads", type=int, default=10_000, help="leads per experiment over all days")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--assignments", type=int, default=10_000_000)
    parser.add_argument("--jobs", type=int, default=2, help="processes for the simulation")
    parser.add_argument("--affinity-sigma", type=float, default=AFFINITY_SIGMA,
                        help="spread (lognormal sigma) of the leads' engagement; CUPED gains with it")
    parser.add_argument("--cells", default="", help="only the cells whose name contains this (e.g. 50/50)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    per_day = max(1, args.leads // args.days)
    started = time.perf_counter()
    cells = [cell for cell in CELLS if args.cells in cell.name]
    tasks = [(cell, args.experiments, args.days, per_day, args.alpha, args.affinity_sigma, args.seed * 1000 + i)
             for i, cell in enumerate(cells)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(run_cell, tasks))
    print(f"{args.experiments} experiments per cell, {args.days} daily looks, {per_day * args.days:,} leads each, "
          f"alpha {args.alpha}, lead affinity sigma {args.affinity_sigma} ({time.perf_counter() - started:.0f}s)")
    print("promoted at a 10/90 or 80/10/10 step = moved on to the next step; ended inconclusive at a 10/90 step "
          "= not proven harmful but more than 10% lower")
    print(f"{'cell':16} {'method':24} {'ever promoted [95% CI] median day':38} "
          f"{'ever rolled back [95% CI] median day':38} inconclusive")
    for cell, (result, reduction) in zip(cells, results, strict=True):
        for method in METHODS:
            ended = sum(v == "inconclusive" for v, _ in result[method]) / len(result[method])
            print(f"{cell.name:16} {method:24} {summarize(result[method], 'promote'):38} "
                  f"{summarize(result[method], 'rollback'):38} {ended:.3f}")
        with_cuped, without = (dict(enumerate(result[m])) for m in METHODS[:2])
        gained = sum(with_cuped[i][0] == "promote" != without[i][0] for i in with_cuped)
        lost = sum(without[i][0] == "promote" != with_cuped[i][0] for i in with_cuped)
        print(f"{'':16} CUPED removed {reduction:.1%} of the weighted score's variance (median); same data: "
              f"promoted with CUPED only {gained}, without CUPED only {lost}")
    aggregated, evaluated = speed(args.assignments)
    print(f"speed: {args.assignments:,} assignments -> per-arm statistics for 10 arms x 7 metrics in "
          f"{aggregated:.2f}s; decide() for 9 challengers against the champion in {evaluated:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
