"""Retrying a warehouse write that lost a race to another process.

On the ``ducklake`` backend several processes write at once: DuckLake's optimistic concurrency
lets each transaction run, and refuses a commit that conflicts with one committed meanwhile
(both changed the same table's rows, or both took an id from ``warehouse_counters``). The
refused transaction is rolled back whole; ``retry_on_conflict`` runs it again (it re-reads
what it depends on) up to ``attempts`` times with exponential backoff and jitter, then raises
``WriteConflict``, which names the operation. On the DuckDB file backend one process writes at
a time (the ``duckdb_warehouse`` pool), so a conflict only arises between transactions of one
process and is retried the same way.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 10
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 10.0


class WriteConflict(RuntimeError):
    """A write still conflicted with other processes' commits after every retry."""


def is_conflict(exc: BaseException) -> bool:
    """A commit refused because another transaction changed the same data first."""
    if not isinstance(exc, duckdb.Error):
        return False
    text = str(exc).lower()
    return "conflict" in text or "failed to commit ducklake transaction" in text


def retry_on_conflict(fn: Callable[[], T], what: str, *, attempts: int = ATTEMPTS,
                      first_delay_s: float = FIRST_DELAY_S, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``fn`` (one whole transaction); on a write conflict run it again, at most
    ``attempts`` times in all, waiting 0.2 s, 0.4 s, ... (capped, with jitter) in between."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except duckdb.Error as exc:
            if not is_conflict(exc):
                raise
            if attempt == attempts:
                raise WriteConflict(f"{what}: still conflicting with other writers after {attempts} attempts "
                                    f"({str(exc).splitlines()[-1][:200]}); run it again") from exc
            log.warning("%s: write conflict (attempt %d of %d), retrying in %.1f s", what, attempt, attempts, delay)
            sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, MAX_DELAY_S)
    raise AssertionError("unreachable")
