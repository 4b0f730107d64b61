"""Benchmark: outcome labelling against a bare GROUP BY, and incremental against full.

Generates a year of outreach history in a DuckDB warehouse (N email events, default 10M,
about ten per message, plus replies and CRM events), then, each phase in its own process
so peak memory is measured per phase:

  bare         CREATE TABLE AS SELECT message_id, count(*) FROM email_events GROUP BY 1
  fold         only the labelling's GROUP BY (the per-message aggregates the policy needs),
               into a temporary table: no joins, no label rules, no persistent write; printed
               to show how much of the ratio the aggregation itself takes
  write        after `full`: only writing the labels it produced into a new persistent table
               (CREATE TABLE AS SELECT * FROM packed_labels, committed, then dropped): the
               part of the ratio that storing one row per message takes
  full         refresh_labels(full=True) over the year (the real labelling code)
  incremental  one new day of events lands (new messages and late events for old ones),
               then refresh_labels() folds in only that day
  full_again   a full relabel over the same data as `incremental`, for the ratio

and prints seconds, peak RSS and the ratios against the targets:
  full / bare <= 2.5, peak RSS <= 1.5 GB, incremental / full_again <= 0.10.

    python benchmarks/bench_labelling.py                 # 10M events
    python benchmarks/bench_labelling.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phase_runner import best_of, peak_rss_mb, run_phase  # noqa: E402  (this directory)
from flywheel_pipeline.warehouse.labels import (count_click_paths, dense_key_grouping, refresh_labels,  # noqa: E402
                                                render_fold_sql)
from flywheel_pipeline.warehouse.schema import connect, max_batch  # noqa: E402

START = datetime(2025, 1, 1)
HISTORY_DAYS = 365
AS_OF = datetime(2026, 1, 2)

# One row per event "slot": ten slots per message. The kind of each slot and its delay after
# sending give a realistic mix (machine and human opens, scanner and human clicks, bounces,
# unsubscribes, spam reports) with events spread over up to ~40 days after sending. One
# message in ten tracks three links, which its scanner clicks all at once; a third of those
# are clicked later by the lead too. The labelling classifies those (3.3% of messages) by
# second and link, the other clicked messages from per-message aggregates: twice the demo
# world's share for the per-second analysis (710 of its 45,000 messages, 1.6%).
GENERATE_EVENTS = """
INSERT INTO _email_events
SELECT 'ev-' || e AS sg_event_id, m.message_id, m.message_key, k.event::sendgrid_event,
       m.sent_at + to_microseconds((k.delay_s * 1e6)::BIGINT) AS occurred_at,
       'lead@example.com', k.machine_open, k.url, NULL, NULL, NULL, 'bench', 0,
       least(datediff('day', TIMESTAMP '{start}', m.sent_at + to_microseconds((k.delay_s * 1e6)::BIGINT)) + 1,
             {days} + 1) AS batch_id, m.organization_id, m.organization_id AS key_org
FROM range({lo}, {hi}) r(e)
JOIN _messages m ON m.n = e // 10
CROSS JOIN LATERAL (
    SELECT CASE
             WHEN e % 10 = 0 THEN 'processed'
             WHEN e % 10 = 1 THEN CASE WHEN hash(m.n) % 100 < 3 THEN 'bounce' ELSE 'delivered' END
             WHEN e % 10 IN (2, 3, 4) THEN 'open'
             WHEN e % 10 = 5 AND hash(m.n, 5) % 10 < 4 THEN 'click'        -- scanners and humans
             WHEN e % 10 = 6 AND hash(m.n, 5) % 10 < 2 THEN 'click'        -- scanner's second link
             WHEN e % 10 = 8 AND hash(m.n, 5) % 10 = 0 THEN 'click'        -- and third, where three
             WHEN e % 10 = 9 AND hash(m.n, 5) % 10 = 0 AND hash(m.n, 6) % 3 = 0 THEN 'click'  -- a human too
             WHEN e % 10 = 7 THEN CASE WHEN hash(m.n, 7) % 1000 < 10 THEN 'unsubscribe'
                                       WHEN hash(m.n, 7) % 1000 < 13 THEN 'spamreport' ELSE 'open' END
             ELSE 'open' END AS event,
           CASE WHEN e % 10 = 0 THEN 0.0
                WHEN e % 10 = 1 THEN 5.0 + hash(e) % 20
                WHEN e % 10 = 2 THEN 30.0 + hash(e) % 600
                WHEN e % 10 = 5 AND hash(m.n, 5) % 10 < 2 THEN 12.0        -- scanner: within seconds
                WHEN e % 10 IN (6, 8) AND hash(m.n, 5) % 10 < 2 THEN 12.0
                ELSE 3600.0 + (hash(e) % (40 * 86400)) * ((hash(e, 1) % 100) / 100.0) ^ 3 END AS delay_s,
           CASE WHEN e % 10 = 2 THEN hash(m.n, 2) % 10 < 4 ELSE false END AS machine_open,
           CASE WHEN e % 10 IN (5, 6) THEN 'https://x.example/' || (e % 2)
                WHEN e % 10 = 8 THEN 'https://x.example/2'
                WHEN e % 10 = 9 THEN 'https://x.example/0' END AS url
) k
WHERE m.sent_at + to_microseconds((k.delay_s * 1e6)::BIGINT) < TIMESTAMP '{start}' + to_days({days} + 1)
"""

def generate(db: Path, events: int) -> dict:
    """Write the year into the warehouse tables and the held-back last day into held_* tables.

    Everything is generated into staging tables first and then inserted once, in arrival
    order (by batch, then time), as real ingestion writes it: the warehouse has no deleted
    rows and events are not clustered by message."""
    con = connect(db)
    messages = events // 10
    leads = max(messages // 3, 1)
    con.execute("ALTER TABLE messages ADD COLUMN IF NOT EXISTS n BIGINT")
    con.execute(f"""
        INSERT INTO message_keys (organization_id, message_id, message_key)
        SELECT 'org-' || (i % 5), 'msg-' || lpad(i::VARCHAR, 10, '0'), i + 1 FROM range({messages}) t(i)""")
    con.execute("CREATE TEMP TABLE _messages AS SELECT * FROM messages LIMIT 0")
    con.execute(f"""
        INSERT INTO _messages (message_id, message_key, organization_id, campaign_id, lead_id, recipient_email,
                               channel, sent_at, model_id, model_version, ab_group, task_type, body, tracked_links,
                               source_file, line_no, batch_id, n)
        SELECT 'msg-' || lpad(i::VARCHAR, 10, '0'), i + 1, 'org-' || (i % 5), 'camp-' || (i % 40),
               'lead-' || (i % {leads}), 'lead' || (i % {leads}) || '@example.com',
               'email', TIMESTAMP '{START}' + to_microseconds((i * ({HISTORY_DAYS + 1} * 86400e6 / {messages}))::BIGINT),
               'model-' || (i % 3), '1.0.0', 'control', 'cold_email',
               'body https://x.example/0 https://x.example/1' || CASE WHEN hash(i, 5) % 10 = 0 THEN ' https://x.example/2' ELSE '' END,
               CASE WHEN hash(i, 5) % 10 = 0 THEN 3 ELSE 2 END, 'bench', 0,
               (i * ({HISTORY_DAYS + 1}.0 / {messages}))::BIGINT + 1, i
        FROM range({messages}) t(i)""")
    con.execute("CREATE TEMP TABLE _email_events AS SELECT * FROM email_events LIMIT 0")
    step = 2_000_000
    for lo in range(0, messages * 10, step):
        con.execute(GENERATE_EVENTS.format(start=START, days=HISTORY_DAYS, lo=lo, hi=min(lo + step, messages * 10)))
    # replies and CRM events for a few percent of messages, as in real outreach
    con.execute("CREATE TEMP TABLE _reply_intents AS SELECT * FROM reply_intents LIMIT 0")
    con.execute(f"""
        INSERT INTO _reply_intents
        SELECT 'r-' || n, message_id, message_key, sent_at + INTERVAL 1 DAY, hash(n) % 10 = 0, NULL,
               CASE WHEN hash(n, 3) % 2 = 0 THEN 'positive' ELSE 'negative' END, 'other', 0.5, 'bench',
               least(datediff('day', TIMESTAMP '{START}', sent_at + INTERVAL 1 DAY) + 1, {HISTORY_DAYS + 1}), '1',
               organization_id
        FROM _messages WHERE hash(n, 9) % 100 < 6""")
    con.execute("CREATE TEMP TABLE _crm_events AS SELECT * FROM crm_events LIMIT 0")
    con.execute(f"""
        INSERT INTO _crm_events
        SELECT 'c-' || n, 'bench', CASE WHEN hash(n, 4) % 3 = 0 THEN 'deal_closed' ELSE 'meeting_booked' END,
               message_id, lead_id, NULL, sent_at + INTERVAL 20 DAY, 1000.0 * (hash(n) % 100), 'USD',
               message_id, message_key, 'message_id',
               least(datediff('day', TIMESTAMP '{START}', sent_at + INTERVAL 20 DAY) + 1, {HISTORY_DAYS + 1}),
               'bench', 0, 0, organization_id, organization_id
        FROM _messages WHERE hash(n, 8) % 100 < 2""")
    # the year goes in; the last day is held back: it lands between the full and the
    # incremental refresh
    for table, col, order in (("messages", "batch_id", "batch_id, sent_at"),
                              ("email_events", "batch_id", "batch_id, occurred_at, hash(sg_event_id)"),
                              ("reply_intents", "batch_id", "batch_id"),
                              ("crm_events", "attributed_batch_id", "attributed_batch_id")):
        # in slices of days (each sorted, in batch order): one sort of 100M events would not fit in memory
        for first in range(1, HISTORY_DAYS + 1, 30):
            last = min(first + 29, HISTORY_DAYS)
            con.execute(f"INSERT INTO {table} SELECT * FROM _{table} WHERE {col} BETWEEN {first} AND {last} "
                        f"ORDER BY {order}")
        con.execute(f"CREATE TABLE held_{table} AS SELECT * FROM _{table} WHERE {col} > {HISTORY_DAYS} "
                    f"ORDER BY {order}")
        con.execute(f"DROP TABLE _{table}")
    con.execute(f"INSERT INTO ingest_batches (batch_id, kind, source, started_at) "
                f"SELECT b, 'bench', 'bench', now()::TIMESTAMP FROM range(1, {HISTORY_DAYS + 1}) t(b)")
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in
              ("messages", "email_events", "reply_intents", "crm_events", "held_email_events", "held_messages")}
    late = con.execute("SELECT count(*) FROM held_email_events e JOIN messages m USING (message_id)").fetchone()[0]
    counts["messages_with_3_clicks"] = con.execute(
        "SELECT count(*) FROM (SELECT message_key FROM email_events WHERE event = 'click' "
        "GROUP BY message_key HAVING count(*) >= 3)").fetchone()[0]
    counts["clicked_messages_by_path"] = count_click_paths(con)
    con.execute("CHECKPOINT")
    con.close()
    return {**counts, "held_events_for_old_messages": late}


def phase(db: Path, name: str, threads: int | None, memory_limit: str | None) -> dict:
    con = connect(db, threads=threads, memory_limit=memory_limit)
    started = time.perf_counter()
    if name == "bare":
        con.execute("CREATE OR REPLACE TEMP TABLE _g AS SELECT message_id, count(*) AS n FROM email_events GROUP BY 1")
        detail = {"groups": con.execute("SELECT count(*) FROM _g").fetchone()[0]}
    elif name == "fold":
        with dense_key_grouping(con, enabled=True):  # as refresh_labels(full=True) folds
            con.execute("CREATE OR REPLACE TEMP TABLE _f AS "
                        + render_fold_sql(after_batch=0, up_to_batch=max_batch(con)))
        detail = {"groups": con.execute("SELECT count(*) FROM _f").fetchone()[0]}
    elif name == "write":
        con.execute("BEGIN")
        con.execute("CREATE TABLE _label_copy AS SELECT * FROM packed_labels")
        con.execute("COMMIT")
        seconds = time.perf_counter() - started
        detail = {"rows": con.execute("SELECT count(*) FROM _label_copy").fetchone()[0]}
        con.execute("DROP TABLE _label_copy")
        con.execute("CHECKPOINT")
        con.close()
        return {"phase": name, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), **detail}
    elif name in ("full", "full_again"):
        run = refresh_labels(con, as_of=AS_OF, full=True)
        detail = {"folded_events": run.folded_events, "labelled": run.touched_messages}
    elif name == "land_day":
        con.execute(f"INSERT INTO ingest_batches (batch_id, kind, source, started_at) "
                    f"VALUES ({HISTORY_DAYS + 1}, 'bench', 'bench', now()::TIMESTAMP)")
        for table in ("email_events", "messages", "reply_intents", "crm_events"):
            con.execute(f"INSERT INTO {table} SELECT * FROM held_{table}")
        con.execute("CHECKPOINT")
        detail = {}
    elif name == "incremental":
        run = refresh_labels(con, as_of=AS_OF)
        detail = {"folded_events": run.folded_events, "relabelled": run.touched_messages}
    else:
        raise ValueError(name)
    seconds = time.perf_counter() - started
    con.close()
    return {"phase": name, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), **detail}


def run_phase_in_subprocess(db: Path, name: str, args: argparse.Namespace) -> dict:
    options = ["--db", str(db)]
    if args.threads:
        options += ["--threads", str(args.threads)]
    if args.memory_limit:
        options += ["--memory-limit", args.memory_limit]
    return run_phase(__file__, name, *options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory_limit for the timed phases")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the timed phases (interleaved); each phase keeps its best round")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(Path(args.db), args.phase, args.threads, args.memory_limit)))
        return 0

    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        t = time.perf_counter()
        counts = generate(db, args.events)
        print(f"generated in {time.perf_counter() - t:.1f}s: {counts}", flush=True)
        print(f"warehouse file: {os.path.getsize(db) / 2**20:.0f} MiB", flush=True)

        # The phases are interleaved, one round after another, and each keeps its best round:
        # this machine's speed drifts by tens of percent within minutes, and timing all
        # repeats of one phase before the next would charge a slow minute to one side.
        rounds: dict[str, list[dict]] = {name: [] for name in
                                         ("bare", "fold", "full", "write", "incremental", "full_again")}
        for _ in range(args.repeat):
            for name in ("bare", "fold", "full", "write"):
                rounds[name].append(run_phase_in_subprocess(db, name, args))
        landed = Path(tmp) / "landed.duckdb"
        shutil.copyfile(db, landed)
        run_phase_in_subprocess(landed, "land_day", args)
        for _ in range(args.repeat):
            day = Path(tmp) / "day.duckdb"
            shutil.copyfile(landed, day)  # every round folds the same new day
            rounds["incremental"].append(run_phase_in_subprocess(day, "incremental", args))
            rounds["full_again"].append(run_phase_in_subprocess(day, "full_again", args))
            day.unlink()
        bare, fold, full, write, incremental, full_again = (best_of(rounds[name]) for name in rounds)
        per_round = [f["seconds"] / b["seconds"] for b, f in zip(rounds["bare"], rounds["full"])]
    for r in (bare, fold, full, write, incremental, full_again):
        extra = {k: v for k, v in r.items() if k not in ("phase", "seconds", "peak_rss_mb")}
        print(f"{r['phase']:<12} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   {extra}")
    ratio = full["seconds"] / bare["seconds"]
    inc_ratio = incremental["seconds"] / full_again["seconds"]
    peak = max(full["peak_rss_mb"], incremental["peak_rss_mb"], full_again["peak_rss_mb"])
    print()
    print(f"events: {counts['email_events'] + counts['held_email_events']:,}")
    print(f"labelling / bare GROUP BY:      {ratio:5.2f}x   (target <= 2.5x)  {'OK' if ratio <= 2.5 else 'MISSED'}")
    if len(per_round) > 1:
        print(f"  each round (full / bare):     {', '.join(f'{r:.2f}x' for r in per_round)}")
    print(f"  of which the fold's GROUP BY: {fold['seconds'] / bare['seconds']:5.2f}x   "
          f"(the aggregation alone, {fold['seconds'] / full['seconds']:.0%} of the labelling)")
    print(f"  writing the labels alone:     {write['seconds'] / bare['seconds']:5.2f}x   "
          f"(one persistent row per message, {write['seconds'] / full['seconds']:.0%} of the labelling)")
    print(f"peak RSS while labelling:       {peak:5.0f} MB (target <= 1536 MB) {'OK' if peak <= 1536 else 'MISSED'}")
    print(f"one new day / full relabel:     {inc_ratio:5.3f}    (target <= 0.10)  {'OK' if inc_ratio <= 0.10 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
