"""The data contracts of the labels and of ingestion, as queries: each returns whether the
contract holds and the numbers that show it (the Dagster checks in defs/outcomes/checks.py
report them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb


@dataclass(frozen=True)
class Contract:
    passed: bool
    numbers: dict[str, object] = field(default_factory=dict)
    # rows of a table to show beside the numbers: (header, rows)
    table: tuple[tuple[str, ...], list[tuple]] | None = None


def one_label_per_message(con: duckdb.DuckDBPyConnection) -> Contract:
    labels, distinct, msgs, unknown = con.execute("""
        SELECT (SELECT count(*) FROM message_labels), (SELECT count(DISTINCT message_key) FROM message_labels),
               (SELECT count(*) FROM messages),
               (SELECT count(*) FROM message_labels l ANTI JOIN messages m USING (message_key))""").fetchone()
    return Contract(labels == distinct == msgs and unknown == 0,
                    {"labels": labels, "distinct_messages": distinct, "messages": msgs,
                     "labels_without_message": unknown})


def quality_score_in_range(con: duckdb.DuckDBPyConnection) -> Contract:
    bad, lo, hi = con.execute("""
        SELECT count(*) FILTER (quality_score IS NULL OR quality_score < 0 OR quality_score > 1),
               min(quality_score), max(quality_score) FROM outcome_labels""").fetchone()
    return Contract(bad == 0, {"out_of_range": int(bad), "min": float(lo or 0), "max": float(hi or 0)})


def funnel_flags_consistent(con: duckdb.DuckDBPyConnection) -> Contract:
    both, completed_not_booked, value_mismatch = con.execute("""
        SELECT count(*) FILTER (delivered AND bounced),
               count(*) FILTER (meeting_completed AND NOT meeting_booked),
               count(*) FILTER ((deal_value IS NOT NULL) <> deal_closed)
        FROM outcome_labels""").fetchone()
    return Contract(both == completed_not_booked == value_mismatch == 0,
                    {"delivered_and_bounced": int(both), "completed_not_booked": int(completed_not_booked),
                     "deal_value_mismatch": int(value_mismatch)})


def maturity_consistent(con: duckdb.DuckDBPyConnection, maturity_days: int) -> Contract:
    row = con.execute("SELECT as_of FROM label_runs ORDER BY label_run_id DESC LIMIT 1").fetchone()
    if row is None:
        return Contract(False, {"reason": "no label run recorded"})
    as_of: datetime = row[0]
    wrong = con.execute(f"""
        SELECT count(*) FROM outcome_labels
        WHERE is_mature IS DISTINCT FROM (is_terminal OR sent_at <= ?::TIMESTAMP - to_days({int(maturity_days)}))""",
                        [as_of]).fetchone()[0]
    return Contract(wrong == 0, {"wrong_maturity": int(wrong), "as_of": str(as_of), "maturity_days": maturity_days})


def quarantine_rate(con: duckdb.DuckDBPyConnection, max_rate: float = 0.01) -> Contract:
    lines, quarantined = con.execute(
        "SELECT coalesce(sum(lines), 0), coalesce(sum(quarantined), 0) FROM landing_files").fetchone()
    reasons = con.execute("SELECT source, reason, count(*) FROM quarantine GROUP BY ALL ORDER BY 3 DESC LIMIT 20"
                          ).fetchall()
    # a file refused whole (line 0, e.g. too large to read) holds lines nobody has counted
    refused = [r[0] for r in con.execute("SELECT source || '/' || source_file FROM quarantine WHERE line_no = 0 "
                                         "ORDER BY 1").fetchall()]
    rate = quarantined / lines if lines else 0.0
    return Contract(rate <= max_rate and not refused,
                    {"lines": int(lines), "quarantined": int(quarantined), "rate": round(rate, 5),
                     "files_refused": refused},
                    (("source", "reason", "lines"), reasons))


def email_events_reference_messages(con: duckdb.DuckDBPyConnection, max_rate: float = 0.05) -> Contract:
    """Of the events in the latest SendGrid batch, the share whose message is not (yet) ingested;
    only that batch is read."""
    total, orphans = con.execute("""
        SELECT count(*), count(*) FILTER (m.message_id IS NULL)
        FROM email_events e LEFT JOIN messages m USING (message_key)
        WHERE e.batch_id = (SELECT max(batch_id) FROM ingest_batches
                            WHERE kind = 'ingest' AND source = 'sendgrid' AND accepted > 0)""").fetchone()
    rate = orphans / total if total else 0.0
    return Contract(rate <= max_rate, {"events": int(total), "orphan_events": int(orphans), "rate": round(rate, 5)})
