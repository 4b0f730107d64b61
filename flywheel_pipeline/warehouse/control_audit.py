"""The ``control_audit`` table: one row per control action (HTTP or CLI), written in the action's own
transaction (or, for a refusal, on its own) before the action answers. Created by the migrations
(warehouse/schema.py ``CONTROL_AUDIT_DDL``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import duckdb

from flywheel_pipeline.core.control import Actor

RESULTS = ("ok", "not_found", "conflict", "invalid", "busy", "error")
__all__ = ["Actor", "RESULTS", "counts", "recent", "record"]


def record(con: duckdb.DuckDBPyConnection, actor: Actor, action: str, parameters: dict[str, Any], result: str, *,
           detail: str | None = None, run_id: str | None = None, model_id: str | None = None,
           family: str | None = None) -> str:
    if result not in RESULTS:
        raise ValueError(f"result must be one of {RESULTS}")
    audit_id = str(uuid.uuid4())
    con.execute("""INSERT INTO control_audit (audit_id, acted_at, actor, key_fingerprint, channel, action, parameters,
                       result, detail, run_id, model_id, family)
                   VALUES (?, now()::TIMESTAMP, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [audit_id, actor.name, actor.key_fingerprint, actor.channel, action,
                 json.dumps(parameters, sort_keys=True, default=str), result, detail, run_id, model_id, family])
    return audit_id


AUDIT_COLUMNS = ("acted_at", "actor", "channel", "action", "parameters", "result", "detail", "run_id", "model_id")


def recent(con: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict[str, Any]]:
    """The latest actions, newest first."""
    rows = con.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM control_audit ORDER BY acted_at DESC LIMIT ?",
                       [limit]).fetchall()
    return [{**dict(zip(AUDIT_COLUMNS, r)), "acted_at": r[0].isoformat() + "Z", "parameters": json.loads(r[4] or "{}")}
            for r in rows]


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Actions by name and result."""
    out: dict[str, dict[str, int]] = {}
    for action, result, n in con.execute("SELECT action, result, count(*) FROM control_audit GROUP BY ALL "
                                         "ORDER BY ALL").fetchall():
        out.setdefault(action, {})[result] = int(n)
    return out
