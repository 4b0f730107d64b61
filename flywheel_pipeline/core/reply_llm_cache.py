"""The LLM reply classifier's answers, kept by reply hash and classifier version in a SQLite
file, so a reply is never paid for twice by the same model and prompt."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CachedLabel:
    intent: str
    sentiment: str
    confidence: float
    reason: str


def reply_hash(own_words: str) -> str:
    return hashlib.sha256(own_words.encode("utf-8")).hexdigest()


class ReplyLabelCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as con, con:
            con.execute("""CREATE TABLE IF NOT EXISTS reply_labels (
                reply_hash TEXT NOT NULL, classifier_version TEXT NOT NULL, intent TEXT NOT NULL,
                sentiment TEXT NOT NULL, confidence REAL NOT NULL, reason TEXT NOT NULL,
                PRIMARY KEY (reply_hash, classifier_version))""")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def get_many(self, hashes: list[str], version: str) -> dict[str, CachedLabel]:
        found: dict[str, CachedLabel] = {}
        with contextlib.closing(self._connect()) as con:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in con.execute(
                        f"SELECT reply_hash, intent, sentiment, confidence, reason FROM reply_labels "
                        f"WHERE classifier_version = ? AND reply_hash IN ({marks})", [version, *chunk]):
                    found[row[0]] = CachedLabel(row[1], row[2], float(row[3]), row[4])
        return found

    def put_many(self, labels: dict[str, CachedLabel], version: str) -> None:
        with contextlib.closing(self._connect()) as con, con:
            con.executemany("INSERT OR REPLACE INTO reply_labels VALUES (?, ?, ?, ?, ?, ?)",
                            [(h, version, x.intent, x.sentiment, x.confidence, x.reason) for h, x in labels.items()])
