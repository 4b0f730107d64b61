"""What the outcome assets report: reply intents and outcome labels, summarised for the UI."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

# The funnel_flags table's rows, in the order of the query's columns.
FLAG_NAMES = ("delivered", "bounced", "opened (human)", "clicked (human)", "replied (human)", "positive_reply",
              "meeting_booked", "meeting_completed", "deal_closed", "unsubscribed", "spam_reported",
              "machine opens ignored", "scanner clicks ignored", "auto-replies ignored")


@dataclass(frozen=True)
class IntentSummary:
    replies: int
    by_intent: list[tuple]  # (intent, sentiment, replies)


def intent_summary(con: duckdb.DuckDBPyConnection) -> IntentSummary:
    by_intent = con.execute("SELECT intent, sentiment, count(*) FROM reply_intents GROUP BY ALL ORDER BY 3 DESC"
                            ).fetchall()
    return IntentSummary(sum(int(r[2]) for r in by_intent), by_intent)


@dataclass(frozen=True)
class LabelSummary:
    labels: int
    mature: int
    mean_quality_score: float
    stages: dict[str, int]
    score_buckets: list[tuple[int, int]]  # (tenth of the score, labels)
    flags: list[tuple[str, int]]  # FLAG_NAMES with their counts
    deal_value_total: float
    per_model: list[tuple]  # model_id, messages, mature, mean score, reply, meeting rate, deals (mature)
    events_for_unknown_messages: int


def label_summary(con: duckdb.DuckDBPyConnection) -> LabelSummary:
    total, mature, mean_score = con.execute(
        "SELECT count(*), count(*) FILTER (is_mature), avg(quality_score) FROM outcome_labels").fetchone()
    stages = dict(con.execute("SELECT stage, count(*) FROM outcome_labels GROUP BY 1").fetchall())
    buckets = con.execute("SELECT least(floor(quality_score * 10), 9)::INT AS b, count(*) FROM outcome_labels "
                          "GROUP BY 1 ORDER BY 1").fetchall()
    flags = con.execute("""
        SELECT count(*) FILTER (delivered), count(*) FILTER (bounced), count(*) FILTER (opened),
               count(*) FILTER (clicked), count(*) FILTER (replied), count(*) FILTER (positive_reply),
               count(*) FILTER (meeting_booked), count(*) FILTER (meeting_completed),
               count(*) FILTER (deal_closed), count(*) FILTER (unsubscribed),
               count(*) FILTER (spam_reported), coalesce(sum(machine_opens), 0), coalesce(sum(scanner_clicks), 0),
               coalesce(sum(auto_replies), 0), coalesce(sum(deal_value), 0)
        FROM outcome_labels""").fetchone()
    per_model = con.execute("""
        SELECT model_id, count(*) AS messages, count(*) FILTER (is_mature) AS mature,
               round(avg(quality_score) FILTER (is_mature), 4),
               round(avg(replied::INT) FILTER (is_mature), 4),
               round(avg(meeting_booked::INT) FILTER (is_mature), 4),
               count(*) FILTER (is_mature AND deal_closed)
        FROM outcome_labels GROUP BY 1 ORDER BY 4 DESC NULLS LAST""").fetchall()
    orphans = con.execute("SELECT count(*) FROM message_state s ANTI JOIN messages m USING (message_key)"
                          ).fetchone()[0]
    return LabelSummary(
        labels=int(total), mature=int(mature), mean_quality_score=float(round(mean_score or 0.0, 4)),
        stages={str(k): int(v) for k, v in stages.items()}, score_buckets=[(int(b), int(n)) for b, n in buckets],
        flags=[(name, int(n)) for name, n in zip(FLAG_NAMES, flags[:-1])], deal_value_total=round(float(flags[-1]), 2),
        per_model=per_model, events_for_unknown_messages=int(orphans))
