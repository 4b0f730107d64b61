"""Benchmark: heuristic judging and outcome_drivers' speed over 1M labelled messages, and the
drivers' error rates on simulated worlds.

Judging. A fresh process runs what the ``message_judgements`` asset runs
(warehouse/message_judgements.judge_new_messages: the candidates and content hashes in SQL, the
heuristic scorer of each message's task family in Python, batched writes) over every message of
the file, then a second pass (nothing new: the incremental no-op); it prints messages per second
and its peak RSS. The bodies are ``--distinct-bodies``-way varied text, so few contents repeat
within a run (heuristic reuse only copies contents judged by an earlier run).

Speed. N synthetic mature, delivered messages (5 organizations, 2 task types, bodies of 5 to 225
words, subjects with and without a question, metadata with the lead's first name and company,
prompt template and version; about 8% replies) are built in a DuckDB file with SQL
(messages + packed_labels, as ingestion and labelling write them). A fresh process then runs
what the asset runs: the feature SQL and its aggregation to sufficient statistics
(warehouse/outcome_drivers.py), the statistics (core/drivers.py) and the write of the table;
it prints seconds per phase and its peak RSS.

Error rates. Message-level worlds with the structure the asset sees: eleven features with the
real features' numbers of values, two task types, three organizations whose base rates differ
(reply 5%, 10%, 20%; positive replies half the replies, meetings half the positive replies) and
whose feature mix differs (each organization draws each feature's value from its own
proportions): the features are confounded with organization. Each world is aggregated to the
sufficient statistics the SQL returns and run through core.drivers.drivers (BH at q = 0.05):
* null worlds (outcomes depend on the organization only): the share of worlds with any
  "significant" driver. Every hypothesis is true here, so that share is the FDR (= FWER) BH
  promises to keep <= q; the same worlds with the organization ignored (one stratum) show what
  stratifying buys;
* planted worlds (a question in the subject multiplies the reply probability by 1.2 or 1.4):
  the power to find it (significant, right sign, reply rate) and the mean false discovery
  proportion (significant rows of any other feature / significant rows), which BH keeps <= q.

judge_calibration on simulated worlds, through the asset's SQL (warehouse/judge_calibration.py,
from a simulated source relation) and core.calibration: three judges per world (a heuristic-like
score on a 0-100 grid of quarter points, an LLM-like integer 1-10, people's 1-5 ratings on 5% of
the messages), two task types, three organizations (reply 5%, 10%, 20%):
* null worlds (scores independent of outcomes): the share of worlds in which any row (judge x
  task type x metric) is trusted, promised <= alpha = 0.05 (the simultaneous intervals give
  alpha / 2), and the share of rows trusted;
* planted worlds: a heuristic-like judge whose score shifts with the reply (true AUC about 0.55
  and 0.60): the power to trust it on (reply, all), and the coverage of DeLong's unadjusted
  interval of the true AUC (binomial scores, AUC known exactly).

    python benchmarks/bench_learn.py [--messages 1000000] [--worlds 500] [--world-size 20000]
                                     [--calibration-worlds 500] [--calibration-size 5000] [--skip-judge]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phase_runner import peak_rss_mb, run_phase  # noqa: E402  (this directory)

from flywheel_pipeline.core.drivers import Cell, DriversConfig, drivers  # noqa: E402
from flywheel_pipeline.core.stats.frequentist import wilson_interval  # noqa: E402
from flywheel_pipeline.warehouse.label_layout import FLAG  # noqa: E402

# the asset's features and their numbers of values in a typical warehouse
FEATURE_VALUES = {"framework": 4, "tone": 3, "model_id": 3, "prompt_template": 2, "prompt_version": 2,
                  "body_words": 5, "subject_words": 3, "subject_question": 2, "personalization": 4,
                  "send_hour_utc": 4, "weekday_utc": 7}
PLANTED = ("subject_question", "v0")
ORG_REPLY = (0.05, 0.10, 0.20)


def build(path: Path, messages: int) -> None:
    from flywheel_pipeline.warehouse.schema import connect

    con = connect(path, threads=2)
    flags = (f"{FLAG['delivered']} + CASE WHEN r < 800 THEN {FLAG['replied']} ELSE 0 END"
             f" + CASE WHEN r < 400 THEN {FLAG['positive_reply']} ELSE 0 END"
             f" + CASE WHEN r < 150 THEN {FLAG['meeting_booked']} ELSE 0 END")
    con.execute(f"""
        CREATE TEMP TABLE gen AS
        SELECT i, (hash(i, 1) % 10000)::BIGINT AS r, ['Ada', 'Ben', 'Chloe', 'Dmitri'][(hash(i, 2) % 4)::BIGINT + 1] AS fn,
               ['Lopez Labs', 'Kim Group', 'Novak Systems'][(hash(i, 3) % 3)::BIGINT + 1] AS company,
               (5 + (hash(i, 4) % 221)::BIGINT)::INTEGER AS words
        FROM range(1, {int(messages)} + 1) t(i)""")
    con.execute("""
        INSERT INTO messages BY NAME
        SELECT 'm' || i AS message_id, i AS message_key, 'org_' || (i % 5) AS organization_id,
               'lead-' || (i % 100000) AS lead_id, TIMESTAMP '2026-06-01' + to_seconds((i * 7919) % 10368000) AS sent_at,
               ['gpt-a', 'gpt-b', 'gpt-c'][i % 3 + 1] AS model_id, ['cold_email', 'follow_up'][(i // 7) % 2 + 1] AS task_type,
               CASE WHEN (hash(i, 5) % 2)::BIGINT = 0 THEN company || ': worth a quick chat?' ELSE company || ': quick question'
                    END AS subject,
               CASE WHEN (hash(i, 6) % 3)::BIGINT = 0 THEN 'Hi there, ' ELSE 'Hi ' || fn || ', teams like ' || company || ' ' END
                   || repeat('word ', words) AS body,
               ['AIDA', 'PAS', 'BAB', 'QVC'][(hash(i, 7) % 4)::BIGINT + 1] AS framework,
               ['friendly', 'formal', 'direct'][(hash(i, 8) % 3)::BIGINT + 1] AS tone,
               json_object('first_name', fn, 'company', company,
                           'prompt_template', ['pain_first', 'value_first'][(hash(i, 9) % 2)::BIGINT + 1],
                           'prompt_version', ['1', '2'][(hash(i, 10) % 2)::BIGINT + 1]) AS metadata,
               'bench' AS source_file, i AS line_no, 1 AS batch_id
        FROM gen""")
    con.execute(f"""
        INSERT INTO packed_labels (message_key, sent_at, flags, is_mature)
        SELECT i, TIMESTAMP '2026-06-01' + to_seconds((i * 7919) % 10368000), ({flags})::USMALLINT, true FROM gen""")
    con.close()


def phase_drivers(path: Path) -> dict:
    from flywheel_pipeline.warehouse.outcome_drivers import feature_cells, write_drivers
    from flywheel_pipeline.warehouse.schema import connect

    con = connect(path, threads=2)
    t0 = time.perf_counter()
    cells = feature_cells(con)
    t1 = time.perf_counter()
    results = drivers(cells)
    t2 = time.perf_counter()
    write_drivers(con, results, datetime(2026, 12, 3))
    t3 = time.perf_counter()
    messages = sum(c.n for c in cells if c.feature == "framework")
    con.close()
    return {"sql_s": t1 - t0, "stats_s": t2 - t1, "write_s": t3 - t2, "seconds": t3 - t0, "cells": len(cells),
            "rows": len(results), "messages": messages, "peak_rss_mb": peak_rss_mb()}


def phase_judge(path: Path) -> dict:
    from flywheel_pipeline.warehouse.message_judgements import judge_new_messages
    from flywheel_pipeline.warehouse.schema import connect

    con = connect(path, threads=2)
    t0, cpu0 = time.perf_counter(), time.process_time()
    run = judge_new_messages(con, batch_size=5_000)
    t1, cpu1 = time.perf_counter(), time.process_time()
    again = judge_new_messages(con)
    t2 = time.perf_counter()
    con.close()
    return {"seconds": t1 - t0, "cpu_s": cpu1 - cpu0, "judged": run.judged, "reused": run.reused, "by_judge": run.by_judge,
            "again_s": t2 - t1, "again_judged": again.judged + again.reused, "peak_rss_mb": peak_rss_mb()}


class World:
    """Message-level worlds: features confounded with organization, outcomes nested."""

    def __init__(self, size: int, design_seed: int = 2026):
        design = np.random.default_rng(design_seed)
        self.size = size
        # each organization's own proportions of each feature's values (the confounding)
        self.mix = {f: design.dirichlet(np.full(k, 3.0), size=len(ORG_REPLY)) for f, k in FEATURE_VALUES.items()}

    def draw(self, rng: np.random.Generator, factor: float = 1.0, pooled: bool = False) -> list[Cell]:
        n, orgs = self.size, len(ORG_REPLY)
        org = rng.integers(0, orgs, n)
        task = rng.integers(0, 2, n)
        values = {}
        for feature, k in FEATURE_VALUES.items():
            u = rng.random(n)[:, None]
            values[feature] = (u > np.cumsum(self.mix[feature][org], axis=1)).sum(axis=1).clip(0, k - 1)
        p = np.array(ORG_REPLY)[org] * np.where(values[PLANTED[0]] == 0, factor, 1.0)
        replied = rng.random(n) < p
        positive = replied & (rng.random(n) < 0.5)
        meeting = positive & (rng.random(n) < 0.5)
        cells = []
        strata = np.zeros(n, dtype=int) if pooled else org
        for feature, k in FEATURE_VALUES.items():
            index = (strata * 2 + task) * k + values[feature]
            size = orgs * 2 * k
            counts = [np.bincount(index, weights=w, minlength=size) for w in (None, replied, positive, meeting)]
            for j in range(size):
                if counts[0][j]:
                    o, rest = divmod(j, 2 * k)
                    t, v = divmod(rest, k)
                    cells.append(Cell(f"org_{o}", ("cold_email", "follow_up")[t], feature, f"v{v}", int(counts[0][j]),
                                      {"reply_rate": int(counts[1][j]), "positive_reply_rate": int(counts[2][j]),
                                       "meeting_rate": int(counts[3][j])}))
        return cells


def _share(hits: int, runs: int) -> str:
    low, high = wilson_interval(hits, runs)
    return f"{hits / runs:.3f} [{low:.3f}, {high:.3f}]"


def error_rates(worlds: int, size: int, seed: int, q: float) -> None:
    world = World(size)
    config = DriversConfig(q=q)
    t0 = time.perf_counter()
    any_stratified = any_pooled = 0
    tests = 0
    for w in range(worlds):
        results = drivers(world.draw(np.random.default_rng([seed, w])), config)
        tests += sum(d.tested for d in results)
        any_stratified += any(d.significant for d in results)
        pooled = drivers(world.draw(np.random.default_rng([seed, w]), pooled=True), config)
        any_pooled += any(d.significant for d in pooled)
    print(f"null worlds: {worlds} of {size:,} messages, {tests / worlds:.0f} tests each (BH at q = {q})")
    print(f"null  stratified by organization  worlds with any significant driver: {_share(any_stratified, worlds)}"
          f"  (promised <= {q})")
    print(f"null  organization ignored        worlds with any significant driver: {_share(any_pooled, worlds)}")
    for factor in (1.2, 1.4):
        found = 0
        fdp = []
        for w in range(worlds):
            results = drivers(world.draw(np.random.default_rng([seed, 10_000 + w]), factor=factor), config)
            significant = [d for d in results if d.significant]
            found += any(d.feature == PLANTED[0] and d.value == PLANTED[1] and d.metric == "reply_rate"
                         and d.task_type == "all" and d.estimate > 0 for d in significant)
            false = sum(d.feature != PLANTED[0] for d in significant)
            fdp.append(false / len(significant) if significant else 0.0)
        mean_fdp = float(np.mean(fdp))
        half = 1.96 * float(np.std(fdp, ddof=1)) / math.sqrt(worlds) if worlds > 1 else math.nan
        print(f"planted x{factor:.1f} (question in subject, reply)  power: {_share(found, worlds)}"
              f"   mean FDP: {mean_fdp:.3f} [{max(0.0, mean_fdp - half):.3f}, {mean_fdp + half:.3f}]"
              f"  (promised <= {q})")
    print(f"error-rate worlds: {time.perf_counter() - t0:.1f} s")


CALIBRATION_CHUNK = 25  # worlds per SQL pass


def _calibration_frame(rng: np.random.Generator, worlds: range, size: int, shift: float) -> "pd.DataFrame":
    """Scored messages of several worlds (SCORED_MESSAGES_SQL's columns), judges named 'w<world>:<judge>'.
    ``shift``: the heuristic-like judge's score moves by shift x its sd with a reply (0: null)."""
    import pandas as pd

    frames = []
    for w in worlds:
        org = rng.integers(0, len(ORG_REPLY), size)
        task = np.where(rng.random(size) < 0.5, "cold_email", "follow_up")
        replied = rng.random(size) < np.array(ORG_REPLY)[org]
        positive = replied & (rng.random(size) < 0.5)
        meeting = positive & (rng.random(size) < 0.5)
        quality = replied * 40.0 + positive * 30.0 + rng.normal(0, 5, size)
        keys = np.arange(size)
        scores = {"heuristic": np.clip(np.round((70 + 10 * shift * replied + rng.normal(0, 10, size)) * 4) / 4, 0, 100),
                  "llm": rng.integers(1, 11, size).astype(float), "human": rng.integers(1, 6, size).astype(float)}
        for judge, score in scores.items():
            keep = rng.random(size) < 0.05 if judge == "human" else np.ones(size, dtype=bool)
            frames.append(pd.DataFrame({
                "judge": f"w{w}:{judge}", "criteria_version": "1", "task_type": task[keep], "message_key": keys[keep],
                "score": score[keep], "reply": replied[keep].astype(int), "positive_reply": positive[keep].astype(int),
                "meeting": meeting[keep].astype(int), "quality_score": quality[keep]}))
    return pd.concat(frames, ignore_index=True)


def _calibration_stats(frame) -> dict[str, list]:
    """world -> its rows' sufficient statistics, through the asset's SQL."""
    import duckdb

    from flywheel_pipeline.warehouse.judge_calibration import auc_stats

    con = duckdb.connect()
    con.register("_sim", frame)
    by_world: dict[str, list] = {}
    for s in auc_stats(con, "SELECT * FROM _sim"):
        by_world.setdefault(s.judge.split(":")[0], []).append(s)
    con.close()
    return by_world


def calibration_error_rates(worlds: int, size: int, seed: int, alpha: float) -> None:
    from scipy.stats import binom

    from flywheel_pipeline.core.calibration import CalibrationConfig, calibrate, delong

    config = CalibrationConfig(alpha=alpha)
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 7])
    any_trusted = rows_trusted = rows = 0
    for start in range(0, worlds, CALIBRATION_CHUNK):
        frame = _calibration_frame(rng, range(start, min(worlds, start + CALIBRATION_CHUNK)), size, 0.0)
        for stats in _calibration_stats(frame).values():
            result = calibrate(stats, config)
            rows += len(result)
            rows_trusted += sum(r.trusted for r in result)
            any_trusted += any(r.trusted for r in result)
    print(f"calibration null worlds: {worlds} of {size:,} messages, {rows / worlds:.0f} rows each "
          f"(simultaneous intervals, alpha = {alpha})")
    print(f"calibration null  worlds with any trusted judge: {_share(any_trusted, worlds)}  (promised <= {alpha})")
    print(f"calibration null  rows trusted: {_share(rows_trusted, rows)}")
    for shift in (0.18, 0.36):
        trusted = 0
        auc_sum = 0.0
        for start in range(0, worlds, CALIBRATION_CHUNK):
            frame = _calibration_frame(rng, range(start, min(worlds, start + CALIBRATION_CHUNK)), size, shift)
            for stats in _calibration_stats(frame).values():
                result = calibrate(stats, config)
                row = next(r for r in result if r.judge.endswith(":heuristic") and r.task_type == "all"
                           and r.metric == "reply")
                trusted += row.trusted
                auc_sum += row.auc
        print(f"calibration planted AUC {auc_sum / worlds:.3f} (heuristic, reply, all)  trusted: "
              f"{_share(trusted, worlds)}")
    # coverage of DeLong's (unadjusted) interval: binomial scores, the true AUC known exactly
    k = np.arange(11)
    fp, fn = binom.pmf(k, 10, 0.55), binom.pmf(k, 10, 0.45)
    truth = float((fp * (np.cumsum(fn) - fn + 0.5 * fn)).sum())
    covered = 0
    z = 1.959963984540054
    for start in range(0, worlds, CALIBRATION_CHUNK):
        frame = _calibration_frame(rng, range(start, min(worlds, start + CALIBRATION_CHUNK)), size, 0.0)
        reply = frame["reply"].to_numpy().astype(bool)
        frame["score"] = np.where(reply, rng.binomial(10, 0.55, len(frame)), rng.binomial(10, 0.45, len(frame)))
        for stats in _calibration_stats(frame).values():
            row = next(s for s in stats if s.judge.endswith(":heuristic") and s.task_type == "all"
                       and s.metric == "reply")
            auc, se = delong(row)
            covered += abs(auc - truth) <= z * se
    print(f"calibration DeLong 95% interval coverage of the true AUC {truth:.3f}: {_share(covered, worlds)}")
    print(f"calibration worlds: {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--worlds", type=int, default=500)
    parser.add_argument("--world-size", type=int, default=20_000)
    parser.add_argument("--q", type=float, default=0.05)
    parser.add_argument("--calibration-worlds", type=int, default=500)
    parser.add_argument("--calibration-size", type=int, default=5_000)
    parser.add_argument("--alpha", type=float, default=0.05, help="judge_calibration's family-wise level")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--phase", choices=("drivers", "judge"))
    parser.add_argument("--skip-judge", action="store_true", help="leave the heuristic judging phase out")
    parser.add_argument("--database")
    args = parser.parse_args()
    if args.phase == "drivers":
        print(json.dumps(phase_drivers(Path(args.database))))
        return
    if args.phase == "judge":
        print(json.dumps(phase_judge(Path(args.database))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        build(database, args.messages)
        print(f"built {args.messages:,} labelled messages in {time.perf_counter() - t0:.1f} s")
        r = run_phase(__file__, "drivers", "--database", str(database))
        j = None if args.skip_judge else run_phase(__file__, "judge", "--database", str(database))
    if j is not None:
        print(f"heuristic judging of {j['judged'] + j['reused']:,} messages: {j['seconds']:.1f} s, "
              f"{(j['judged'] + j['reused']) / j['seconds']:,.0f} messages/s ({j['judged']:,} scored, {j['reused']:,} "
              f"copied; {', '.join(f'{k} {v:,}' for k, v in sorted(j['by_judge'].items()))}), peak RSS "
              f"{j['peak_rss_mb']:.0f} MB")
        print(f"heuristic judging CPU time: {j['cpu_s']:.1f} s, {(j['judged'] + j['reused']) / j['cpu_s']:,.0f} "
              "messages per CPU second (the machine's load does not change it)")
        print(f"heuristic judging again (nothing new): {j['again_s']:.2f} s, {j['again_judged']} judged")
    print(f"drivers over {r['messages']:,} messages: {r['seconds']:.2f} s (features + sufficient statistics in SQL "
          f"{r['sql_s']:.2f} s, statistics {r['stats_s']:.3f} s, write {r['write_s']:.3f} s), {r['cells']} cells, "
          f"{r['rows']} rows, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"messages per second: {r['messages'] / r['seconds']:,.0f}")
    error_rates(args.worlds, args.world_size, args.seed, args.q)
    calibration_error_rates(args.calibration_worlds, args.calibration_size, args.seed, args.alpha)


if __name__ == "__main__":
    main()
