"""Benchmark: the warehouse past one machine. Figures, not a timed test.

  labelling   a full label run (refresh_labels(full=True), the real labelling code) over the
              same year of history (bench_labelling.py's generator, N email events, default 10M)
              on the DuckDB file backend and on DuckLake (PostgreSQL catalog on 127.0.0.1, data
              in a local directory): seconds and the ratio lake / file
  linear      (--linear) a full label run on the DuckDB file backend over N and over 10 N events
              (a year of history each, the same generator): cost must grow linearly,
              10 N <= 11x the N time; each size generated, labelled and removed in turn
  writers     W processes ingesting their own landing files into one DuckLake at once
              (W = 1, 2, 4 by default; one file per transaction, so commits race), each record
              checked to be loaded once: rows per second as W grows, and the conflicts retried

Each phase runs in its own process. Needs the local PostgreSQL (FLYWHEEL_TEST_PG_* as the tests):
a scratch database per DuckLake, dropped afterwards.

    python benchmarks/bench_scale.py                      # 10M events, writers 1 2 4
    python benchmarks/bench_scale.py --events 1000000 --writers 1 2
    python benchmarks/bench_scale.py --linear --skip-labelling --writers   # 10M and 100M, file backend
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phase_runner import peak_rss_mb, run_phase  # noqa: E402  (this directory)
from flywheel_pipeline_tests import lake as test_lake  # noqa: E402
from flywheel_pipeline.core.landing import write_jsonl  # noqa: E402
from flywheel_pipeline.warehouse.labels import refresh_labels  # noqa: E402
from flywheel_pipeline.warehouse.schema import connect  # noqa: E402

# the tables bench_labelling.generate fills, copied into the lake as they are
COPIED = ("message_keys", "messages", "email_events", "crm_events", "reply_intents", "ingest_batches",
          "held_email_events")


def copy_into_lake(db: Path, database: str, data_path: str) -> None:
    con = connect(database, data_path=data_path)
    src = str(db).replace("'", "''")
    con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    for table in COPIED:
        if table.startswith("held_"):
            continue
        columns = [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() AND table_name = ? "
            "ORDER BY column_index", [table]).fetchall()]
        con.execute(f"INSERT INTO {table} SELECT {', '.join(columns)} FROM src.main.{table}")
    con.execute("UPDATE warehouse_counters SET value = (SELECT max(batch_id) FROM ingest_batches) "
                "WHERE name = 'batch_id'")
    con.execute("UPDATE warehouse_counters SET value = (SELECT max(message_key) FROM message_keys) "
                "WHERE name = 'message_key'")
    con.execute("DETACH src")
    con.close()


def phase_label(database: str, data_path: str | None) -> dict:
    con = connect(database, data_path=data_path)
    started = time.perf_counter()
    run = refresh_labels(con, full=True)
    seconds = time.perf_counter() - started
    labels = con.execute("SELECT count(*) FROM packed_labels").fetchone()[0]
    con.close()
    return {"seconds": round(seconds, 2), "labels": labels, "folded_events": run.folded_events,
            "peak_rss_mb": round(peak_rss_mb())}


def phase_writer(database: str, data_path: str, landing: str) -> dict:
    from flywheel_pipeline.warehouse.ingest import ingest_source

    logging.basicConfig(level=logging.WARNING)
    retries = []

    class Count(logging.Handler):
        def emit(self, record):
            retries.append(record.getMessage())

    logging.getLogger("flywheel_pipeline.warehouse.concurrency").addHandler(Count())
    con = connect(database, data_path=data_path)
    started = time.perf_counter()
    result = ingest_source(con, Path(landing), "messages", chunk_files=1)
    seconds = time.perf_counter() - started
    con.close()
    return {"seconds": round(seconds, 2), "accepted": result.accepted, "conflicts_retried": len(retries)}


def _writers_round(workdir: Path, writers: int, files: int, per_file: int) -> dict:
    from datetime import datetime, timezone

    landings = []
    for w in range(writers):
        landing = workdir / f"w{writers}-{w}"
        sent = datetime(2026, 3, 2, 9, tzinfo=timezone.utc).isoformat()
        for f in range(files):
            write_jsonl(landing, "messages", [
                {"message_id": f"w{w}-f{f}-{i}", "organization_id": "org-1", "lead_id": f"lead-{i}",
                 "sent_at": sent, "subject": "Hello", "body": "Hi there, see https://x.example/a"}
                for i in range(per_file)], name=f"w{w}-{f:04d}.jsonl")
        landings.append(landing)
    with test_lake.scratch_lake(workdir / f"data-{writers}") as target:
        connect(target.database, data_path=target.data_path).close()
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--phase", "writer", "--database", target.database,
                                   "--data-path", target.data_path, "--landing", str(landing)],
                                  stdout=subprocess.PIPE, text=True) for landing in landings]
        outs = [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - started
        con = connect(target.database, data_path=target.data_path)
        loaded, distinct = con.execute("SELECT count(*), count(DISTINCT message_id) FROM messages").fetchone()
        con.close()
    expected = writers * files * per_file
    assert loaded == distinct == expected, (loaded, distinct, expected)
    return {"writers": writers, "rows": expected, "wall_s": round(wall, 2),
            "rows_per_s": round(expected / wall), "conflicts_retried": sum(o["conflicts_retried"] for o in outs)}


def linear(workdir: Path, events: int) -> dict:
    """A full label run over ``events`` and over ten times as many, on the file backend: the
    ratio of the times, against the promise of at most 11 (linear growth with 10% slack)."""
    from bench_labelling import generate

    runs = {}
    for n in (events, 10 * events):
        db = workdir / f"linear-{n}.duckdb"
        started = time.perf_counter()
        generated = generate(db, n)
        generate_s = round(time.perf_counter() - started, 1)
        runs[n] = {**run_phase(__file__, "label", "--database", str(db)), "generate_s": generate_s,
                   "generated": generated}
        print(json.dumps({"events": n, **runs[n]}), flush=True)
        db.unlink(missing_ok=True)
    ratio = runs[10 * events]["seconds"] / runs[events]["seconds"]
    return {"small": {"events": events, **runs[events]}, "large": {"events": 10 * events, **runs[10 * events]},
            "ratio_10x_events": round(ratio, 2), "target": "<= 11", "met": ratio <= 11}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--writers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--writer-files", type=int, default=20, help="landing files per writer")
    parser.add_argument("--writer-rows", type=int, default=2_000, help="messages per landing file")
    parser.add_argument("--skip-labelling", action="store_true")
    parser.add_argument("--linear", action="store_true",
                        help="also label N and 10 N events on the file backend (needs disk: ~40 bytes per event)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--data-path", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "label":
        print(json.dumps(phase_label(args.database, args.data_path or None)))
        return 0
    if args.phase == "writer":
        print(json.dumps(phase_writer(args.database, args.data_path, args.landing)))
        return 0
    reason = test_lake.postgres_reason()
    if reason and (args.writers or not args.skip_labelling):
        print(f"bench_scale: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    report: dict = {"events": args.events}
    try:
        if args.linear:
            report["linear"] = linear(workdir, args.events)
            print(json.dumps(report["linear"]), flush=True)
        if not args.skip_labelling:
            from bench_labelling import generate

            db = workdir / "wh.duckdb"
            started = time.perf_counter()
            report["generated"] = generate(db, args.events)
            report["generate_s"] = round(time.perf_counter() - started, 1)
            file_run = run_phase(__file__, "label", "--database", str(db))
            with test_lake.scratch_lake(workdir / "lake-data") as target:
                started = time.perf_counter()
                copy_into_lake(db, target.database, target.data_path)
                report["copy_into_lake_s"] = round(time.perf_counter() - started, 1)
                lake_run = run_phase(__file__, "label", "--database", target.database,
                                     "--data-path", target.data_path)
            assert file_run["labels"] == lake_run["labels"], (file_run, lake_run)
            report["labelling"] = {"file": file_run, "ducklake_local": lake_run,
                                   "ratio_lake_to_file": round(lake_run["seconds"] / file_run["seconds"], 2)}
            print(json.dumps(report["labelling"]), flush=True)
        report["writers"] = []
        for writers in args.writers:
            round_ = _writers_round(workdir, writers, args.writer_files, args.writer_rows)
            report["writers"].append(round_)
            print(json.dumps(round_), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
