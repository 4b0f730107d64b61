"""Which judges ``judge_calibration`` trusts, published as ``judges.json`` for ``POST /council``
(the service never opens the warehouse). The council's pairs are ingested like any landing
source (warehouse/ingest.py) and joined to the DPO dataset in warehouse/datasets.py.

``judge_calibration`` (judge, metric, task_type, n, auc, auc_low, auc_high, spearman, trusted) is
built by the calibration assets; when the table is absent or empty the snapshot says so, and the
council falls back to its untrusted rule (core/council.choose_judge)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from flywheel_pipeline.core.atomic_json import write_json_atomic

CALIBRATION_COLUMNS = ("judge", "metric", "task_type", "n", "auc", "auc_low", "auc_high", "spearman", "trusted")


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0]
                or con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()[0])


def judge_trust(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """``{"judges": [rows of judge_calibration], "reason": why there are none, or None}``."""
    if not _has_table(con, "judge_calibration"):
        return {"judges": [], "reason": "the warehouse has no judge_calibration table (calibration has not run)"}
    columns = {r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() "
                                         "WHERE table_name = 'judge_calibration'").fetchall()}
    missing = [c for c in CALIBRATION_COLUMNS if c not in columns]
    if missing:
        return {"judges": [], "reason": f"judge_calibration lacks column(s) {', '.join(missing)}"}
    rows = con.execute(f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM judge_calibration "
                       "ORDER BY judge, task_type, metric").fetchall()
    judges = [{c: (float(v) if c in ("auc", "auc_low", "auc_high", "spearman") and v is not None else v)
               for c, v in zip(CALIBRATION_COLUMNS, row)} for row in rows]
    for j in judges:
        j["trusted"] = bool(j["trusted"])
        j["n"] = int(j["n"]) if j["n"] is not None else None
    return {"judges": judges, "reason": None if judges else "judge_calibration has no rows"}


def publish_judge_trust(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, Any]:
    """Write the snapshot to ``path`` atomically (with the time), and return it."""
    snapshot = {**judge_trust(con), "published_at": datetime.now(timezone.utc).isoformat()}
    write_json_atomic(snapshot, path)
    return snapshot

