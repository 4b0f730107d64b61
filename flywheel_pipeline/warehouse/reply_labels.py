"""Reviewed reply labels: which replies to show a person, the latest label per reply (it
overrides the classifier in reply_intents), and the labelled replies the offline model can
also learn from."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

# The latest reviewed label of each reply, (key_org, reply_id) as in replies (ties: the larger label_id).
LATEST_LABELS_SQL = """
SELECT key_org, reply_id, arg_max(label_id, (labelled_at, label_id)) AS label_id,
       arg_max(intent, (labelled_at, label_id)) AS intent, arg_max(sentiment, (labelled_at, label_id)) AS sentiment
FROM reply_labels GROUP BY key_org, reply_id
"""


@dataclass(frozen=True)
class ReviewRow:
    reply_id: str
    subject: str | None
    text: str | None
    intent: str
    sentiment: str
    confidence: float
    classifier: str
    organization_id: str = ""  # the reply's key_org ('': it names no organization)


def replies_to_review(con: duckdb.DuckDBPyConnection, *, below: float, limit: int) -> list[ReviewRow]:
    """Replies the classifier was least sure of (confidence under ``below``), least sure first;
    auto-replies known by their headers and replies a person already labelled are left out."""
    rows = con.execute("""
        SELECT i.reply_id, r.subject, r.text, i.intent, i.sentiment, i.confidence,
               i.classifier || ':' || coalesce(i.classifier_version, '?'), i.key_org
        FROM reply_intents i JOIN replies r USING (key_org, reply_id)
        WHERE i.confidence < ? AND i.classifier <> 'human'
          AND (NOT i.is_auto_reply OR i.auto_reply_reason = 'auto-reply text')
        ORDER BY i.confidence, i.reply_id, i.key_org LIMIT ?
    """, [below, limit]).fetchall()
    return [ReviewRow(*row) for row in rows]


def labelled_replies(con: duckdb.DuckDBPyConnection) -> list[tuple[str | None, str]]:
    """(reply text, reviewed intent) for every reply with a reviewed label, by reply_id."""
    return con.execute(f"""
        SELECT r.text, l.intent FROM ({LATEST_LABELS_SQL}) l JOIN replies r USING (key_org, reply_id)
        ORDER BY reply_id, key_org
    """).fetchall()
