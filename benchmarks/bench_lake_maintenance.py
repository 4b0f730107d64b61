"""Benchmark: DuckLake maintenance after many small commits. Figures, not a timed test.

A DuckLake (PostgreSQL catalog on 127.0.0.1, data in a local directory) takes --files small
commits: the demo world's landing records (the simulator's messages, SendGrid events, replies and
CRM events) rewritten as files of --rows records each, ingested one file per transaction (the
shape of a warehouse fed every few seconds). Then, before and after maintenance
(warehouse/lake_maintenance.py, every snapshot but the latest expired, the retired files deleted
by a second run past the grace period):

  scan     email_events and messages read whole (every column of every Parquet file)
  label    one full label run (refresh_labels(full=True), the real labelling code)

and the lake's data files, delete files, snapshots and Parquet files on disk, with the ratios.
Needs the local PostgreSQL (FLYWHEEL_TEST_PG_* as the tests): a scratch database, dropped after.

    python benchmarks/bench_lake_maintenance.py                      # 500 files of 200 records
    python benchmarks/bench_lake_maintenance.py --files 200 --rows 100
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flywheel_pipeline.cli.options import positive_int  # noqa: E402
from flywheel_pipeline.core import landing as landing_zone  # noqa: E402
from flywheel_pipeline.core.label_policy import LabelPolicy  # noqa: E402
from flywheel_pipeline.simulator import SimConfig, simulate  # noqa: E402
from flywheel_pipeline.warehouse.ingest import attribute_unlinked, ingest_source  # noqa: E402
from flywheel_pipeline.warehouse.labels import refresh_labels  # noqa: E402
from flywheel_pipeline.warehouse.lake_maintenance import FILE_GRACE, lake_counts, maintain  # noqa: E402
from flywheel_pipeline.warehouse.reply_intents import classify_new_replies  # noqa: E402
from flywheel_pipeline.warehouse.schema import connect  # noqa: E402
from flywheel_pipeline_tests import lake as test_lake  # noqa: E402

AS_OF = datetime(2026, 5, 1, tzinfo=timezone.utc)
RECORDS_PER_MESSAGE = 12  # what the demo world lands per message (all sources, measured), to size it


def small_files(workdir: Path, files: int, rows: int) -> tuple[Path, int]:
    """The demo world, sized to about ``files`` x ``rows`` records, with its landing records
    rewritten as files of ``rows`` records (each source's in landing order); returns the landing
    zone and the number of files written."""
    world = workdir / "world"
    per_day = max(10, files * rows // (RECORDS_PER_MESSAGE * 30))
    simulate(world, SimConfig(seed=7, days=30, end=date(2026, 4, 20), organizations=2,
                              leads_per_org=max(60, per_day * 2), messages_per_day=per_day))
    landing, written = workdir / "landing", 0
    for source in landing_zone.SOURCES:
        records = [line for path in sorted((world / source).glob("*.jsonl"))
                   for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for start in range(0, len(records), rows):  # lines as landed (a malformed one stays malformed)
            landing_zone.write_jsonl(landing, source, records[start:start + rows], name=f"{source}-{written:06d}.jsonl")
            written += 1
    return landing, written


def measure(con) -> dict:
    started = time.perf_counter()
    for table in ("email_events", "messages"):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _scan AS SELECT * FROM {table}")
    scan = time.perf_counter() - started
    con.execute("DROP TABLE _scan")
    started = time.perf_counter()
    refresh_labels(con, LabelPolicy(), as_of=AS_OF, full=True)
    label = time.perf_counter() - started
    return {"scan_s": round(scan, 3), "label_s": round(label, 3)}


def parquet_files(data: Path) -> int:
    return sum(1 for _ in data.rglob("*.parquet"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=positive_int, default=500, help="small commits (about): landing files, one per "
                                                               "transaction")
    parser.add_argument("--rows", type=positive_int, default=200, help="records per landing file")
    args = parser.parse_args()
    reason = test_lake.postgres_reason()
    if reason:
        print(f"bench_lake_maintenance: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-maint-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        landing, files = small_files(workdir, args.files, args.rows)
        print(f"landing: {files} files of up to {args.rows} records (asked for about {args.files}) "
              f"({time.perf_counter() - started:.1f} s)")
        with test_lake.scratch_lake(workdir / "lake-data") as target:
            con = connect(target.database, data_path=target.data_path)
            started = time.perf_counter()
            for source in landing_zone.SOURCES:
                ingest_source(con, landing, source, chunk_files=1)
            attribute_unlinked(con, "crm_events", LabelPolicy())
            attribute_unlinked(con, "replies", LabelPolicy())
            classify_new_replies(con)
            print(f"ingested one file per transaction in {time.perf_counter() - started:.1f} s")
            before_counts, before_disk = lake_counts(con), parquet_files(Path(target.data_path))
            measure(con)  # warm-up: the first label run fills an empty message_state, the first scan reads cold
            before = measure(con)
            started = time.perf_counter()
            result = maintain(con, now=datetime.now(timezone.utc), snapshot_retention=timedelta(0))
            first_s = time.perf_counter() - started
            started = time.perf_counter()
            # the next day's run: the files this one retired are past the grace period
            second = maintain(con, now=datetime.now(timezone.utc) + 2 * FILE_GRACE, snapshot_retention=timedelta(0))
            second_s = time.perf_counter() - started
            after_counts, after_disk = lake_counts(con), parquet_files(Path(target.data_path))
            after = measure(con)
            con.close()
        b, a = before_counts, after_counts
        print(f"maintenance: {first_s:.2f} s ({result.files_rewritten} files rewritten, {result.files_merged} "
              f"merged, {len(result.snapshots_expired)} snapshots expired), then {second_s:.2f} s "
              f"({len(second.snapshots_expired)} snapshots expired, {second.files_deleted} files deleted, "
              f"{second.orphans_deleted} orphaned)")
        print(f"data files   {b.data_files:>7,} -> {a.data_files:>7,}  "
              f"({b.data_files / max(a.data_files, 1):.0f}x fewer)")
        print(f"delete files {b.delete_files:>7,} -> {a.delete_files:>7,}")
        print(f"snapshots    {b.snapshots:>7,} -> {a.snapshots:>7,}")
        print(f"on disk      {before_disk:>7,} -> {after_disk:>7,} Parquet files; data "
              f"{b.data_bytes / 1e6:.1f} -> {a.data_bytes / 1e6:.1f} MB")
        print(f"scan         {before['scan_s']:>7.3f} -> {after['scan_s']:>7.3f} s  "
              f"({before['scan_s'] / max(after['scan_s'], 1e-6):.2f}x)")
        print(f"label run    {before['label_s']:>7.3f} -> {after['label_s']:>7.3f} s  "
              f"({before['label_s'] / max(after['label_s'], 1e-6):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
