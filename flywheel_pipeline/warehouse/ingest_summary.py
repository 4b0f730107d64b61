"""What the ingestion assets report: table totals, the latest landing files and per-source
breakdowns (read after a source is ingested)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

# The table each landing source loads.
SOURCE_TABLES = {"messages": "messages", "sendgrid": "email_events", "crm": "crm_events", "replies": "replies",
                 "reply_labels": "reply_labels", "feedback": "feedback", "council_pairs": "council_pairs"}


@dataclass(frozen=True)
class SourceSummary:
    rows: int  # rows in the source's table
    recent_files: list[tuple]  # (file, lines, valid, quarantined, batch), newest first
    breakdown: list[tuple]  # per-source counts (see BREAKDOWNS)
    unlinked: int | None  # rows still waiting for their message (crm, replies)


# (header, query) of each source's breakdown table.
BREAKDOWNS: dict[str, tuple[tuple[str, ...], str]] = {
    "messages": (("model_id", "messages"), "SELECT model_id, count(*) FROM messages GROUP BY 1 ORDER BY 2 DESC"),
    "sendgrid": (("event", "events"), "SELECT event, count(*) FROM email_events GROUP BY 1 ORDER BY 2 DESC"),
    "crm": (("type", "attribution", "events"),
            "SELECT type, coalesce(attribution, 'unattributed'), count(*) FROM crm_events GROUP BY ALL ORDER BY 1, 2"),
    # every rating from 1 to 5, with its count (0 when none) and share
    "feedback": (("rating", "ratings", "share"),
                 "SELECT r.rating, count(f.rating), "
                 "round(coalesce(count(f.rating) / nullif(sum(count(f.rating)) OVER (), 0), 0), 4) "
                 "FROM range(1, 6) r(rating) LEFT JOIN feedback f ON f.rating = r.rating GROUP BY 1 ORDER BY 1"),
    "council_pairs": (("task_type", "judge", "judge_trusted", "pairs", "mean_margin"),
                      "SELECT task_type, judge, judge_trusted, count(*), round(avg(margin), 2) FROM council_pairs "
                      "GROUP BY ALL ORDER BY 1, 2, 3"),
}


def source_summary(con: duckdb.DuckDBPyConnection, source: str) -> SourceSummary:
    table = SOURCE_TABLES[source]
    rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    recent = con.execute(
        "SELECT file_name, lines, valid_lines, quarantined, batch_id FROM landing_files "
        "WHERE source = ? ORDER BY batch_id DESC, file_name DESC LIMIT 10", [source]).fetchall()
    breakdown = con.execute(BREAKDOWNS[source][1]).fetchall() if source in BREAKDOWNS else []
    unlinked = None
    if table in ("crm_events", "replies"):
        unlinked = int(con.execute(f"SELECT count(*) FROM {table} WHERE message_id IS NULL").fetchone()[0])
    return SourceSummary(int(rows), recent, breakdown, unlinked)
