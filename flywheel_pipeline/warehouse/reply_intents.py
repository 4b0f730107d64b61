"""Classify replies into ``reply_intents``, streaming in batches.

Replies are the only text the labelling needs to *understand*, so this is the one step in
Python: each reply is classified by a
:class:`~flywheel_pipeline.core.reply_classifier.ReplyClassifier` (default: the configured
one, core/reply_classifiers.py) and keeps the classifier's name, version and confidence.
A reply is classified again only when the configured classifier's name or version differs
from the one that classified it; its row then takes a new ``batch_id`` only if what labels
read changed (sentiment, intent, auto-reply flag), so ``refresh_labels`` relabels just those
messages. A reviewed label (``reply_labels``, ``flywheel replies correct``) overrides the
classifier: the row takes the label's intent and sentiment, confidence 1, classifier
``human`` and the label's id as version. Replies whose attribution arrives later are
re-linked without re-classifying. A reply is (key_org, reply_id), as in ``replies``: two
organizations' replies with one id are two replies, each with its own intent and labels.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from flywheel_pipeline.core.reply_classifier import ReplyClassifier, ReplyIntent
from flywheel_pipeline.core.reply_classifiers import make_reply_classifier
from flywheel_pipeline.warehouse.reply_labels import LATEST_LABELS_SQL, labelled_replies
from flywheel_pipeline.warehouse.concurrency import retry_on_conflict
from flywheel_pipeline.warehouse.schema import new_batch, transaction

HUMAN = "human"  # the classifier name of rows decided by a reviewed label
_COLUMNS = ["key_org", "reply_id", "message_id", "message_key", "received_at", "is_auto_reply", "auto_reply_reason",
            "sentiment", "intent", "confidence", "classifier", "classifier_version", "batch_id"]


@dataclass
class ClassifyResult:
    batch_id: int
    classifier: str = ""
    classified: int = 0       # new replies classified
    reclassified: int = 0     # replies classified again by a new classifier or version
    changed: int = 0          # of those, whose sentiment, intent or auto-reply flag changed
    reviewed: int = 0         # rows set from a reviewed label (reply_labels) this time
    relinked: int = 0
    by_intent: Counter = field(default_factory=Counter)
    by_sentiment: Counter = field(default_factory=Counter)
    auto_replies: int = 0


def classify_new_replies(con: duckdb.DuckDBPyConnection, classifier: ReplyClassifier | None = None,
                         *, batch_size: int = 5_000,
                         progress: Callable[[str], None] | None = None) -> ClassifyResult:
    """Classify replies without an intent, and re-classify those whose stored classifier or
    version is not ``classifier``'s (run again whole on a write conflict with another process)."""
    classifier = classifier or make_reply_classifier()
    return retry_on_conflict(lambda: _classify_once(con, classifier, batch_size=batch_size, progress=progress),
                             "classifying replies")


def _classify_once(con: duckdb.DuckDBPyConnection, classifier: ReplyClassifier, *, batch_size: int,
                   progress: Callable[[str], None] | None) -> ClassifyResult:
    name, version = classifier.name, str(classifier.version)
    with transaction(con):
        batch_id = new_batch(con, "classify", "replies")
        result = ClassifyResult(batch_id, f"{name}:{version}")
        # replies attributed since they were classified: copy the new message_id over
        result.relinked = con.execute(f"""
            UPDATE reply_intents AS i SET message_id = r.message_id, message_key = r.message_key,
                                          batch_id = {batch_id}
            FROM replies r
            WHERE r.key_org = i.key_org AND r.reply_id = i.reply_id AND r.message_key IS NOT NULL
              AND i.message_key IS DISTINCT FROM r.message_key
        """).fetchone()[0]
        # a reviewed label (reply_labels) decides instead of the classifier: classifier 'human',
        # version the label's id
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _todo AS
            SELECT row_number() OVER (ORDER BY r.reply_id, r.key_org) AS n, r.key_org, r.reply_id, r.message_id,
                   r.message_key,
                   r.received_at, r.subject, r.text, r.headers,
                   i.reply_id IS NOT NULL AS stored, i.sentiment AS old_sentiment, i.intent AS old_intent,
                   i.is_auto_reply AS old_auto, i.batch_id AS old_batch,
                   l.label_id, l.intent AS label_intent, l.sentiment AS label_sentiment
            FROM replies r LEFT JOIN reply_intents i USING (key_org, reply_id)
                 LEFT JOIN ({LATEST_LABELS_SQL}) l USING (key_org, reply_id)
            WHERE CASE WHEN l.label_id IS NOT NULL
                       THEN i.reply_id IS NULL OR i.classifier <> '{HUMAN}' OR i.classifier_version <> l.label_id
                       ELSE i.reply_id IS NULL OR i.classifier IS DISTINCT FROM ?
                            OR i.classifier_version IS DISTINCT FROM ? END
        """, [name, version])
        total = con.execute("SELECT count(*) FROM _todo").fetchone()[0]
        for start in range(0, total, batch_size):
            rows = con.execute("SELECT key_org, reply_id, message_id, message_key, received_at, subject, text, headers, "
                               "stored, old_sentiment, old_intent, old_auto, old_batch, "
                               "label_id, label_intent, label_sentiment "
                               "FROM _todo WHERE n > ? AND n <= ? ORDER BY n",
                               [start, start + batch_size]).fetchall()
            new, again = [], []
            classified = iter(_classify_rows(classifier, [row[1:] for row in rows if row[13] is None]))
            for (key_org, reply_id, message_id, message_key, received_at, subject, text, headers,
                 stored, old_sentiment, old_intent, old_auto, old_batch,
                 label_id, label_intent, label_sentiment) in rows:
                if label_id is not None:
                    intent = _reviewed(label_id, label_intent, label_sentiment)
                    result.reviewed += 1
                else:
                    intent = next(classified)
                same = stored and (old_sentiment, old_intent, old_auto) == (
                    intent.sentiment, intent.intent, intent.is_auto_reply)
                row = (key_org, reply_id, message_id, message_key, received_at, intent.is_auto_reply,
                       intent.auto_reply_reason, intent.sentiment, intent.intent, float(intent.confidence),
                       intent.classifier or name, intent.classifier_version or version,
                       old_batch if same else batch_id)
                (again if stored else new).append(row)
                result.changed += int(stored and not same)
                result.by_intent[intent.intent] += 1
                result.by_sentiment[intent.sentiment] += 1
                result.auto_replies += int(intent.is_auto_reply)
            if new:
                _write(con, new, "INSERT INTO reply_intents BY NAME SELECT * FROM _intents_frame")
            if again:
                _write(con, again, """
                    UPDATE reply_intents AS i SET is_auto_reply = f.is_auto_reply,
                           auto_reply_reason = f.auto_reply_reason, sentiment = f.sentiment, intent = f.intent,
                           confidence = f.confidence, classifier = f.classifier,
                           classifier_version = f.classifier_version, batch_id = f.batch_id
                    FROM _intents_frame f WHERE i.key_org = f.key_org AND i.reply_id = f.reply_id""")
            result.classified += len(new)
            result.reclassified += len(again)
            if progress:
                progress(f"classified {result.classified + result.reclassified}/{total} replies")
        con.execute("DROP TABLE IF EXISTS _todo")
        con.execute("UPDATE ingest_batches SET finished_at = now()::TIMESTAMP, accepted = ? "
                    "WHERE batch_id = ?", [result.classified + result.changed, batch_id])
    return result


def pipeline_classifier(con: duckdb.DuckDBPyConnection, name: str | None = None) -> ReplyClassifier:
    """The configured classifier; ``cue_model`` also learns from the replies people labelled
    (reply_labels) beside the shipped tuning split, so its version moves with them."""
    classifier = make_reply_classifier(name)
    labelled = labelled_replies(con)
    if classifier.name != "cue_model" or not labelled:
        return classifier
    from flywheel_pipeline.core.reply_cue_model import CueModelReplyClassifier, train
    from flywheel_pipeline.core.reply_eval_set import shipped_set
    from flywheel_pipeline.core.reply_text import own_text

    examples = [(own_text(row.text), row.intent) for row in shipped_set("tuning")]
    examples += [(own_text(text), intent) for text, intent in labelled]
    return CueModelReplyClassifier(train(examples))


def _reviewed(label_id: str, intent: str, sentiment: str) -> ReplyIntent:
    auto = intent == "auto_reply"
    return ReplyIntent(sentiment, intent, 1.0, auto, "reviewed label" if auto else None,
                       classifier=HUMAN, classifier_version=label_id)


def _classify_rows(classifier: ReplyClassifier, rows: list[tuple]) -> list:
    """Each row's intent; a classifier with ``classify_batch`` (the llm one) gets them all at once."""
    replies = [(subject, text, _headers(headers)) for _, _, _, _, subject, text, headers, *_ in rows]
    batch = getattr(classifier, "classify_batch", None)
    if batch is not None:
        return list(batch(replies))
    return [classifier.classify(subject=subject, text=text, headers=headers) for subject, text, headers in replies]


def _headers(headers: object) -> dict:
    if isinstance(headers, str):
        try:
            parsed = json.loads(headers)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return headers if isinstance(headers, dict) else {}


def _write(con: duckdb.DuckDBPyConnection, rows: list[tuple], statement: str) -> None:
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame["message_key"] = frame["message_key"].astype("Int64")  # NULL-able integer
    frame["batch_id"] = frame["batch_id"].astype("int64")
    con.register("_intents_frame", frame)
    try:
        con.execute(statement)
    finally:
        con.unregister("_intents_frame")
