"""Classify new replies into ``reply_intents``, streaming in batches.

Replies are the only text the labelling needs to *understand*, so this is the one step in
Python: each reply is classified once (``reply_intents`` is keyed by ``reply_id``) by a
:class:`~flywheel_pipeline.core.reply_classifier.ReplyClassifier`. Replies whose
attribution arrives later are re-linked without re-classifying.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from flywheel_pipeline.core.reply_classifier import ReplyClassifier, RuleBasedReplyClassifier
from flywheel_pipeline.warehouse.schema import new_batch, transaction


@dataclass
class ClassifyResult:
    batch_id: int
    classified: int = 0
    relinked: int = 0
    by_intent: Counter = field(default_factory=Counter)
    by_sentiment: Counter = field(default_factory=Counter)
    auto_replies: int = 0


def classify_new_replies(con: duckdb.DuckDBPyConnection, classifier: ReplyClassifier | None = None,
                         *, batch_size: int = 5_000,
                         progress: Callable[[str], None] | None = None) -> ClassifyResult:
    classifier = classifier or RuleBasedReplyClassifier()
    label = f"{classifier.name}:{classifier.version}"
    with transaction(con):
        batch_id = new_batch(con, "classify", "replies")
        result = ClassifyResult(batch_id)
        # replies attributed since they were classified: copy the new message_id over
        result.relinked = con.execute(f"""
            UPDATE reply_intents AS i SET message_id = r.message_id, message_key = r.message_key,
                                          batch_id = {batch_id}
            FROM replies r
            WHERE r.reply_id = i.reply_id AND r.message_key IS NOT NULL
              AND i.message_key IS DISTINCT FROM r.message_key
        """).fetchone()[0]
        con.execute("""
            CREATE OR REPLACE TEMP TABLE _todo AS
            SELECT row_number() OVER (ORDER BY r.reply_id) AS n, r.reply_id, r.message_id, r.message_key,
                   r.received_at, r.subject, r.text, r.headers
            FROM replies r ANTI JOIN reply_intents i USING (reply_id)
        """)
        total = con.execute("SELECT count(*) FROM _todo").fetchone()[0]
        for start in range(0, total, batch_size):
            rows = con.execute("SELECT reply_id, message_id, message_key, received_at, subject, text, headers "
                               "FROM _todo WHERE n > ? AND n <= ? ORDER BY n",
                               [start, start + batch_size]).fetchall()
            out = []
            for reply_id, message_id, message_key, received_at, subject, text, headers in rows:
                parsed = json.loads(headers) if isinstance(headers, str) else (headers or {})
                intent = classifier.classify(subject=subject, text=text, headers=parsed)
                out.append((reply_id, message_id, message_key, received_at, intent.is_auto_reply,
                            intent.auto_reply_reason, intent.sentiment, intent.intent,
                            float(intent.confidence), label, batch_id))
                result.by_intent[intent.intent] += 1
                result.by_sentiment[intent.sentiment] += 1
                result.auto_replies += int(intent.is_auto_reply)
            frame = pd.DataFrame(out, columns=[
                "reply_id", "message_id", "message_key", "received_at", "is_auto_reply", "auto_reply_reason",
                "sentiment", "intent", "confidence", "classifier", "batch_id"])
            frame["message_key"] = frame["message_key"].astype("Int64")  # NULL-able integer
            con.register("_intents_frame", frame)
            con.execute("INSERT INTO reply_intents BY NAME SELECT * FROM _intents_frame")
            con.unregister("_intents_frame")
            result.classified += len(out)
            if progress:
                progress(f"classified {result.classified}/{total} replies")
        con.execute("DROP TABLE IF EXISTS _todo")
        con.execute("UPDATE ingest_batches SET finished_at = now()::TIMESTAMP, accepted = ? "
                    "WHERE batch_id = ?", [result.classified, batch_id])
    return result
