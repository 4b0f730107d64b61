"""Benchmark: ingesting one large SendGrid landing file against DuckDB's own JSON reader.

Writes one landing file of N raw SendGrid events (default 3M, about 1.1 GiB: opens with
and without `sg_machine_open`, clicks, deliveries, with categories, useragent and ip, and
10% of the events posted twice, as retried webhooks do), then, each phase in its own
process and into its own new warehouse file:

  read_json  CREATE TABLE AS SELECT * FROM read_json(file): DuckDB's own reader, no checks
  ingest     ingest_source(): lines numbered, parsed and checked, quarantine, de-duplication,
             message keys, the primary key, landing_files; one transaction

and prints seconds, events/s and peak RSS (VmHWM) of each, and the ratios ingest/read_json.

    python benchmarks/bench_ingest.py                  # 3M events
    python benchmarks/bench_ingest.py --events 200000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from phase_runner import best_of, peak_rss_mb, run_phase  # noqa: E402  (this directory)
from flywheel_pipeline.warehouse.ingest import ingest_source  # noqa: E402
from flywheel_pipeline.warehouse.schema import connect  # noqa: E402

FILE_NAME = "bench-sendgrid.jsonl"

GENERATE = """
COPY (
    SELECT e.email, e.timestamp, e."smtp-id", e.event, e.category, e.sg_event_id, e.sg_message_id,
           e.useragent, e.ip, e.url, e.sg_machine_open, e.message_id
    FROM (
        SELECT 'lead' || (j // 30) || '@example.com' AS email, 1767225600 + j AS timestamp,
               '<' || md5((j // 10)::VARCHAR) || '@example.com>' AS "smtp-id",
               CASE j % 5 WHEN 0 THEN 'delivered' WHEN 1 THEN 'processed' WHEN 4 THEN 'click' ELSE 'open' END AS event,
               ['cold_email', 'campaign-' || (j % 40)] AS category,
               'ev-' || j AS sg_event_id,
               md5(j::VARCHAR) || '.filterdrecv-5645d9c87f-6r2ch-1-5F6A2A3D-1.0' AS sg_message_id,
               CASE WHEN j % 5 IN (2, 3, 4) THEN 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)' END AS useragent,
               CASE WHEN j % 5 IN (2, 3, 4) THEN '203.0.113.' || (j % 250) END AS ip,
               CASE WHEN j % 5 = 4 THEN 'https://x.example/pricing?utm=' || (j % 7) END AS url,
               CASE WHEN j % 5 = 2 THEN true END AS sg_machine_open,
               'msg-' || lpad((j // 10)::VARCHAR, 10, '0') AS message_id
        -- every tenth event is a retry: an identical copy of the one before (SendGrid retries)
        FROM (SELECT CASE WHEN i % 10 = 9 THEN i - 1 ELSE i END AS j FROM range({n}) t(i))) e
) TO '{path}' (FORMAT json)
"""


def generate(landing: Path, events: int) -> Path:
    path = landing / "sendgrid" / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    duckdb.execute(GENERATE.format(n=int(events), path=path))
    return path


def phase(name: str, landing: Path, db: Path) -> dict:
    started = time.perf_counter()
    if name == "read_json":
        con = duckdb.connect(str(db))
        con.execute("CREATE TABLE raw AS SELECT * FROM read_json(?, format = 'newline_delimited')",
                    [str(landing / "sendgrid" / FILE_NAME)])
        con.execute("CHECKPOINT")
        detail = {"rows": con.execute("SELECT count(*) FROM raw").fetchone()[0]}
    elif name == "ingest":
        con = connect(db)
        result = ingest_source(con, landing, "sendgrid")
        con.execute("CHECKPOINT")
        detail = {"lines": result.lines, "accepted": result.accepted, "duplicates": result.duplicates,
                  "quarantined": result.quarantined}
    else:
        raise ValueError(name)
    seconds = time.perf_counter() - started
    con.close()
    return {"phase": name, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), **detail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="run each phase this many times, keep the fastest")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--landing", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.landing), Path(args.db))))
        return 0

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-ingest-") as tmp:
        landing = Path(tmp) / "landing"
        t = time.perf_counter()
        path = generate(landing, args.events)
        size_mib = path.stat().st_size / 2**20
        print(f"generated {args.events:,} events ({size_mib:,.0f} MiB) in {time.perf_counter() - t:.1f}s", flush=True)
        results = {}
        for name in ("read_json", "ingest"):
            runs = []
            for attempt in range(args.repeat):
                db = Path(tmp) / f"{name}-{attempt}.duckdb"
                runs.append(run_phase(__file__, name, "--landing", str(landing), "--db", str(db)))
                db.unlink()
            results[name] = best_of(runs)
    for r in results.values():
        extra = {k: v for k, v in r.items() if k not in ("phase", "seconds", "peak_rss_mb")}
        print(f"{r['phase']:<10} {r['seconds']:7.2f} s  {args.events / r['seconds']:>10,.0f} events/s   "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB ({r['peak_rss_mb'] / size_mib:.1f}x the file)   {extra}")
    base, ours = results["read_json"], results["ingest"]
    print()
    print(f"ingest / read_json: {ours['seconds'] / base['seconds']:.2f}x the time, "
          f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x the peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
