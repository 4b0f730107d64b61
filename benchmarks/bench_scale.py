"""Benchmark: the warehouse past one machine. Figures, not a timed test.

  labelling   a full label run (refresh_labels(full=True), the real labelling code) over the
              same year of history (bench_labelling.py's generator, N email events, default 10M)
              on each of --targets (default all three):
                file      the DuckDB file backend
                lake      DuckLake, PostgreSQL catalog on 127.0.0.1, data in a local directory
                lake-s3   DuckLake, the same catalog, data in s3://bucket/prefix/ served by moto's
                          standalone S3 server in its own process on 127.0.0.1 (AWS_ENDPOINT_URL
                          and the other AWS_* settings point the warehouse at it)
              seconds of each (the generated year copied into each lake first, not timed in the
              label run), the ratios lake / file and lake-s3 / file, each lake's data size and
              moto's peak RSS. moto is a Python test server: lake-s3 measures the warehouse's S3
              path (HTTP range reads, uploads), not a real object store's speed; so each lake's
              email_events is also read whole (no labelling), the store's own baseline
  linear      (--linear) on the DuckDB file backend over N and over 10 N events (a year of
              history each, the same generator and bench_labelling's phases): a full label run
              (cost must grow linearly, 10 N <= 11x the N time), then one new day landing and its
              incremental run; each size generated, labelled and removed in turn
  storage     (--storage [PER_DAY]) bytes per message and per event as stored, on the demo
              world's messages (prompts and bodies; the generator's are a few bytes): 28 days of
              the simulator in the landing zone, in a DuckDB file, and copied into a DuckLake
  writers     W processes ingesting their own landing files into one DuckLake at once (data in a
              local directory; W = 1, 2, 4 by default; one file per transaction, so commits race),
              each record checked to be loaded once: rows per second as W grows, and the conflicts
              retried

Each phase runs in its own process. Needs the local PostgreSQL (FLYWHEEL_TEST_PG_* as the tests):
a scratch database per DuckLake, dropped afterwards.

    python benchmarks/bench_scale.py                      # 10M events on all three targets, writers 1 2 4
    python benchmarks/bench_scale.py --events 1000000 --writers 1 2
    python benchmarks/bench_scale.py --events 300000 --writers          # labelling only
    python benchmarks/bench_scale.py --targets file,lake-s3 --writers   # the S3 lake against the file
    python benchmarks/bench_scale.py --linear --skip-labelling --writers   # 10M and 100M, file backend
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phase_runner import best_of, peak_rss_mb, run_phase, start_moto  # noqa: E402  (this directory)
from flywheel_pipeline_tests import lake as test_lake  # noqa: E402
from flywheel_pipeline_tests.fakes.http import free_port  # noqa: E402
from flywheel_pipeline.cli.options import positive_int  # noqa: E402
from flywheel_pipeline.core.landing import write_jsonl  # noqa: E402
from flywheel_pipeline.warehouse.labels import refresh_labels  # noqa: E402
from flywheel_pipeline.warehouse.schema import connect  # noqa: E402

# where the labelling comparison runs, in this order (the file backend first: the ratios' base)
TARGETS = ("file", "lake", "lake-s3")
S3_BUCKET = "bench-scale"
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}
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


def parse_targets(text: str) -> list[str]:
    """``file,lake,lake-s3`` (any of them, any order) as a list in TARGETS order."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = names - set(TARGETS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"targets are a comma-separated subset of {','.join(TARGETS)}, "
                                         f"not {text!r}")
    return [t for t in TARGETS if t in names]


@contextmanager
def moto_s3() -> Iterator[dict]:
    """moto's S3 server in its own process on 127.0.0.1 with an empty bucket, and this process's
    AWS_* settings pointing at it (so the phases it starts inherit them) until the block ends.
    Yields {"endpoint", "bucket", "pid"}."""
    from flywheel_pipeline.landing_store import s3_client

    port = free_port()
    proc = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in (*S3_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        s3_client().create_bucket(Bucket=S3_BUCKET)
        yield {"endpoint": endpoint, "bucket": S3_BUCKET, "pid": proc.pid}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        proc.terminate()
        proc.wait(timeout=60)


def s3_size_mb(bucket: str, prefix: str) -> float:
    """The bytes of every object under ``prefix``, in MB (the AWS_* settings name the store)."""
    from flywheel_pipeline.landing_store import s3_client

    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(o["Size"] for page in pages for o in page.get("Contents", [])) / 1e6


def directory_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _label_in_lake(db: Path, target: test_lake.Target) -> dict:
    """The generated year copied into the lake ``target``, then a full label run in its own process."""
    started = time.perf_counter()
    copy_into_lake(db, target.database, target.data_path)
    copy_s = round(time.perf_counter() - started, 1)
    run = run_phase(__file__, "label", "--database", target.database, "--data-path", target.data_path)
    scan = run_phase(__file__, "scan", "--database", target.database, "--data-path", target.data_path)
    return {**run, "copy_into_lake_s": copy_s, "scan_s": scan["seconds"]}


def labelling(workdir: Path, events: int, targets: list[str]) -> dict:
    """A full label run over the same generated year on each target: seconds, and the ratios
    of each lake to the file backend (when the file backend is among the targets)."""
    from bench_labelling import generate

    db = workdir / "wh.duckdb"
    started = time.perf_counter()
    result: dict = {"generated": generate(db, events), "generate_s": round(time.perf_counter() - started, 1)}
    runs: dict[str, dict] = {}
    if "file" in targets:
        runs["file"] = run_phase(__file__, "label", "--database", str(db))
        print(json.dumps({"target": "file", **runs["file"]}), flush=True)
    if "lake" in targets:
        with test_lake.scratch_lake(workdir / "lake-data") as target:
            runs["lake"] = {**_label_in_lake(db, target),
                            "data_mb": round(directory_size_mb(workdir / "lake-data"), 1)}
        print(json.dumps({"target": "lake", **runs["lake"]}), flush=True)
    if "lake-s3" in targets:
        prefix = "lake/"
        with moto_s3() as s3, test_lake.scratch_lake(workdir / "lake-s3-unused") as target:
            s3_target = replace(target, data_path=f"s3://{s3['bucket']}/{prefix}")
            runs["lake-s3"] = {**_label_in_lake(db, s3_target),
                               "data_mb": round(s3_size_mb(s3["bucket"], prefix), 1),
                               "moto_peak_rss_mb": round(peak_rss_mb(s3["pid"]) or 0)}
        print(json.dumps({"target": "lake-s3", **runs["lake-s3"]}), flush=True)
    labels = {name: run["labels"] for name, run in runs.items()}
    assert len(set(labels.values())) == 1, labels  # every target labels the same year alike
    result.update({"file": runs.get("file"), "ducklake_local": runs.get("lake"), "ducklake_s3": runs.get("lake-s3")})
    if "file" in runs:
        for name, key in (("lake", "ratio_lake_to_file"), ("lake-s3", "ratio_lake_s3_to_file")):
            if name in runs:
                result[key] = round(runs[name]["seconds"] / runs["file"]["seconds"], 2)
    if "lake" in runs and "lake-s3" in runs:  # the store's own share: reading the data, no labelling
        result["ratio_scan_s3_to_local"] = round(runs["lake-s3"]["scan_s"] / max(runs["lake"]["scan_s"], 0.01), 2)
    return result


def print_labelling(events: int, result: dict) -> None:
    """One line per target: seconds, peak RSS, and against the file backend."""
    print(f"labelling {events} events (full label run):")
    for name, key, ratio in (("file", "file", None), ("lake-local", "ducklake_local", "ratio_lake_to_file"),
                             ("lake-s3", "ducklake_s3", "ratio_lake_s3_to_file")):
        run = result.get(key)
        if not run:
            continue
        line = f"  {name:<11} {run['seconds']:9.2f} s   peak RSS {run['peak_rss_mb']:6.0f} MB"
        if ratio in result:
            line += f"   {name} / file {result[ratio]:.2f}x"
        if "data_mb" in run:
            line += f"   data {run['data_mb']:.1f} MB"
        if "scan_s" in run:
            line += f"   email_events read whole {run['scan_s']:.2f} s"
        if "moto_peak_rss_mb" in run:
            line += f"   moto peak RSS {run['moto_peak_rss_mb']:.0f} MB"
        print(line, flush=True)
    if "ratio_scan_s3_to_local" in result:
        print(f"  reading email_events whole: lake-s3 / lake-local {result['ratio_scan_s3_to_local']:.2f}x "
              "(the store's share: moto is a Python test server)", flush=True)


def phase_label(database: str, data_path: str | None) -> dict:
    con = connect(database, data_path=data_path)
    started = time.perf_counter()
    run = refresh_labels(con, full=True)
    seconds = time.perf_counter() - started
    labels = con.execute("SELECT count(*) FROM packed_labels").fetchone()[0]
    con.close()
    return {"seconds": round(seconds, 2), "labels": labels, "folded_events": run.folded_events,
            "peak_rss_mb": round(peak_rss_mb())}


def phase_scan(database: str, data_path: str | None) -> dict:
    """The baseline of a lake's storage: its largest table read whole (every column of every
    Parquet file of email_events, through the same connection settings), nothing computed."""
    con = connect(database, data_path=data_path)
    started = time.perf_counter()
    con.execute("CREATE TEMP TABLE _scan AS SELECT * FROM email_events")
    seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM _scan").fetchone()[0]
    con.close()
    return {"seconds": round(seconds, 2), "rows": rows}


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


def linear(workdir: Path, events: int, rounds: int = 3) -> dict:
    """On the file backend, over ``events`` and over ten times as many (a year of history each,
    bench_labelling's generator and phases): the bare GROUP BY (how the engine itself grows) and a
    full label run, each the best of ``rounds`` runs in fresh processes (a 10M run takes 1.5-1.9 s:
    one run's noise alone moves the ratio by 2), then one new day landing and its incremental
    label run. The ratios of the times, against the promise of at most 11 for the full run
    (linear growth with 10% slack); the day is ten times larger too (a year's 1/365th)."""
    from bench_labelling import generate

    labelling_script = str(Path(__file__).resolve().parent / "bench_labelling.py")
    runs = {}
    for n in (events, 10 * events):
        db = workdir / f"linear-{n}.duckdb"
        started = time.perf_counter()
        generated = generate(db, n)
        generate_s = round(time.perf_counter() - started, 1)
        # the engine's own growth, the baseline
        bare = best_of([run_phase(labelling_script, "bare", "--db", str(db)) for _ in range(rounds)])
        fulls = [run_phase(labelling_script, "full", "--db", str(db)) for _ in range(rounds)]
        full = best_of(fulls)
        run_phase(labelling_script, "land_day", "--db", str(db))
        incremental = run_phase(labelling_script, "incremental", "--db", str(db))
        runs[n] = {"seconds": round(full["seconds"], 3), "rounds_s": [round(r["seconds"], 3) for r in fulls],
                   "peak_rss_mb": round(full["peak_rss_mb"]),
                   "bare_s": round(bare["seconds"], 3),
                   "labelled": full["labelled"], "incremental_s": round(incremental["seconds"], 3),
                   "incremental_events": incremental["folded_events"], "relabelled": incremental["relabelled"],
                   "incremental_peak_rss_mb": round(incremental["peak_rss_mb"]),
                   "file_mb": round(db.stat().st_size / 1e6), "generate_s": generate_s, "generated": generated}
        print(json.dumps({"events": n, **runs[n]}), flush=True)
        db.unlink(missing_ok=True)
    small, large = runs[events], runs[10 * events]
    def growth(key: str) -> float:  # no division by a time rounded to zero at tiny sizes
        return large[key] / max(small[key], 0.001)

    ratio = growth("seconds")
    return {"small": {"events": events, **small}, "large": {"events": 10 * events, **large},
            "ratio_10x_events": round(ratio, 2), "ratio_bare_10x": round(growth("bare_s"), 2),
            "ratio_incremental_10x": round(growth("incremental_s"), 2), "target": "<= 11", "met": ratio <= 11}


def storage(workdir: Path, days: int, per_day: int) -> dict:
    """Bytes per message and per event as stored, on the demo world's messages (system and user
    prompts, subjects, bodies of a few hundred words: bench_labelling's generated bodies are a few
    bytes): ``days`` of the simulator ingested into a DuckDB file (checkpointed) and the same
    tables copied into a DuckLake with local data (Parquet)."""
    from flywheel_pipeline.core import landing as landing_zone
    from flywheel_pipeline.simulator import SimConfig, simulate
    from flywheel_pipeline.warehouse.ingest import ingest_source

    landing = workdir / "storage-landing"
    simulate(landing, SimConfig(seed=11, days=days, messages_per_day=per_day))
    landing_bytes = sum(f.stat().st_size for f in landing.rglob("*.jsonl"))
    message_record_bytes = sum(f.stat().st_size for f in (landing / "messages").rglob("*.jsonl"))
    db = workdir / "storage.duckdb"
    con = connect(db)
    for source in landing_zone.SOURCES:
        ingest_source(con, landing, source)
    con.execute("CHECKPOINT")
    messages, events = (con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("messages", "email_events"))
    con.close()
    file_bytes = db.stat().st_size
    with test_lake.scratch_lake(workdir / "storage-lake") as target:
        copy_into_lake(db, target.database, target.data_path)
        lake_bytes = directory_size_mb(workdir / "storage-lake") * 1e6
    return {"days": days, "messages": messages, "email_events": events, "landing_mb": round(landing_bytes / 1e6, 1),
            "file_mb": round(file_bytes / 1e6, 1), "lake_mb": round(lake_bytes / 1e6, 1),
            "file_bytes_per_message": round(file_bytes / messages), "lake_bytes_per_message": round(lake_bytes / messages),
            "landing_bytes_per_message": round(landing_bytes / messages),
            "message_record_bytes": round(message_record_bytes / messages),  # the JSON of one message alone
            "events_per_message": round(events / messages, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--writers", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--writer-files", type=int, default=20, help="landing files per writer")
    parser.add_argument("--writer-rows", type=int, default=2_000, help="messages per landing file")
    parser.add_argument("--targets", type=parse_targets, default=list(TARGETS),
                        help=f"where the labelling comparison runs, comma-separated (default {','.join(TARGETS)})")
    parser.add_argument("--skip-labelling", action="store_true")
    parser.add_argument("--linear", action="store_true",
                        help="also label N and 10 N events on the file backend (needs disk: ~40 bytes per event)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="--linear: full label runs (and bare group-bys) per size, the best counts (default 3)")
    parser.add_argument("--storage", type=int, nargs="?", const=5000, metavar="PER_DAY",
                        help="also measure bytes per message and event on the demo world (28 days, PER_DAY "
                             "messages a day, default 5000)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    parser.add_argument("--data-path", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "label":
        print(json.dumps(phase_label(args.database, args.data_path or None)))
        return 0
    if args.phase == "scan":
        print(json.dumps(phase_scan(args.database, args.data_path or None)))
        return 0
    if args.phase == "writer":
        print(json.dumps(phase_writer(args.database, args.data_path, args.landing)))
        return 0
    reason = test_lake.postgres_reason()
    if reason and (args.writers or not args.skip_labelling or args.storage):
        print(f"bench_scale: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    report: dict = {"events": args.events}
    try:
        if args.storage:
            report["storage"] = storage(workdir, 28, args.storage)
            print(json.dumps(report["storage"]), flush=True)
        if args.linear:
            report["linear"] = linear(workdir, args.events, args.rounds)
            print(json.dumps(report["linear"]), flush=True)
        if not args.skip_labelling:
            report["labelling"] = labelling(workdir, args.events, args.targets)
            print_labelling(args.events, report["labelling"])
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
