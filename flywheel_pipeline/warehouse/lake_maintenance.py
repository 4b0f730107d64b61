"""DuckLake maintenance: fewer, larger files and a bounded history, every query of it here.

A lake that takes many small commits (ingestion commits per chunk, every label run rewrites the
rows it touched) piles up small Parquet files, delete files, rows inlined in the catalog and
snapshots. ``maintain`` runs DuckLake 1.5.5's own functions on the attached lake, in this order:

1. ``ducklake_flush_inlined_data``: small inserts and deletes kept in the catalog go to Parquet;
2. ``ducklake_rewrite_data_files``, per table of ``POOL_WRITTEN_TABLES``: files with at least
   ``REWRITE_DELETE_THRESHOLD`` of their rows deleted are written again without them (the old
   files stay for the snapshots that read them);
3. ``ducklake_merge_adjacent_files``, per table of ``POOL_WRITTEN_TABLES``: each table's small
   files become one (the merged file keeps every row's snapshot, so time travel to any kept
   snapshot reads the same rows);
4. ``ducklake_expire_snapshots``: snapshots older than the retention whose successor is older than
   ``file_grace``, except the latest and those an export's manifest names (``flywheel datasets
   --snapshot N`` must keep working);
5. ``ducklake_cleanup_old_files`` and ``ducklake_delete_orphaned_files``: files no snapshot needs
   any more, and files no commit recorded, once older than ``file_grace`` (a reader still scanning
   a snapshot it started on keeps its files that long).

Steps 1-4 are each one transaction, retried on a write conflict (warehouse/concurrency.py) and
counted; still conflicting after every attempt, the run raises ``WriteConflict``. Measured with
1.5.5: a merge conflicts with a concurrent delete written as a Parquet delete file (more than ten
rows) and is retried, but a small delete kept inlined in the catalog (ten rows or fewer) that
commits while a merge of the same table is in flight is lost without a conflict. So maintenance
runs in the ``duckdb_warehouse`` pool like every writing asset, never beside a label run, and
merges only the tables no writer outside the pool touches (``POOL_WRITTEN_TABLES``).

On the DuckDB file backend there are no snapshots or small files to merge: ``CHECKPOINT`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb

from flywheel_pipeline.warehouse.concurrency import retry_on_conflict
from flywheel_pipeline.warehouse.lake import ALIAS, is_lake_connection
from flywheel_pipeline.warehouse.schema import transaction

# how long a file no snapshot needs (or no commit recorded) stays on disk before it is deleted:
# longer than any read transaction (a full relabel at a year's volume: minutes, docs/scaling.md)
FILE_GRACE = timedelta(hours=1)
# a file whose deleted rows are at least this share of it is rewritten without them (the merge
# leaves files with deletes alone); DuckLake's own default, 0.95, would keep most such files
REWRITE_DELETE_THRESHOLD = 0.05
# The tables whose files are rewritten and merged: those only runs in the duckdb_warehouse pool
# write (ingestion, labelling, classification, calibration), i.e. the large ones. DuckLake 1.5.5
# loses a small delete or update committed during a merge of its table (see above), so tables
# also written outside the pool are left as they are: model_registry and control_audit (the
# control API and CLI), finetune_jobs and offline_evaluations (assets that hold no slot while they
# wait on a backend), message_judgements (the LLM judge), prompt_templates and
# template_deployments (`flywheel templates`), warehouse_counters (every writer). They are small.
POOL_WRITTEN_TABLES = frozenset({
    "ingest_batches", "landing_files", "quarantine", "message_keys", "messages", "email_events", "crm_events",
    "replies", "reply_intents", "reply_labels", "message_state", "packed_labels", "message_refolds", "label_runs",
    "redacted_messages", "feedback", "council_pairs", "judge_calibration", "judge_calibration_deciles"})
FILE_BACKEND_NOTE = "DuckDB file backend: no snapshots or small files to maintain; CHECKPOINT only"


@dataclass(frozen=True)
class LakeCounts:
    """What the lake holds at its current snapshot: data files (and their bytes) and delete files
    per table, and the snapshots kept."""

    data_files: int
    data_bytes: int
    delete_files: int
    snapshots: int
    files_by_table: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {"data_files": self.data_files, "data_bytes": self.data_bytes, "delete_files": self.delete_files,
                "snapshots": self.snapshots}


@dataclass
class MaintenanceResult:
    backend: str  # "ducklake" or "duckdb"
    dry_run: bool
    before: LakeCounts | None = None
    after: LakeCounts | None = None
    files_rewritten: int = 0  # files with deleted rows rewritten without them (dry run: 0)
    files_merged: int = 0  # source files merged into new ones (dry run: not simulated, 0)
    tables_to_merge: list[str] = field(default_factory=list)  # tables holding more than one data file (before)
    snapshots_expired: list[int] = field(default_factory=list)  # dry run: would be
    snapshots_kept_for_exports: list[int] = field(default_factory=list)  # existing, older than the retention
    files_deleted: int = 0  # dry run: would be
    orphans_deleted: int = 0  # dry run: would be
    conflicts_retried: int = 0
    note: str = ""

    def summary(self) -> dict[str, object]:
        """Flat figures for Dagster metadata and the command's output."""
        out: dict[str, object] = {"backend": self.backend, "dry_run": self.dry_run}
        if self.before is not None:
            out.update({f"{k}_before": v for k, v in self.before.as_dict().items()})
        if self.after is not None:
            out.update({f"{k}_after": v for k, v in self.after.as_dict().items()})
        if self.backend == "ducklake":
            out.update({"files_rewritten": self.files_rewritten, "files_merged": self.files_merged,
                        "snapshots_expired": len(self.snapshots_expired),
                        "snapshots_kept_for_exports": list(self.snapshots_kept_for_exports),
                        "files_deleted": self.files_deleted, "orphans_deleted": self.orphans_deleted,
                        "conflicts_retried": self.conflicts_retried})
        if self.note:
            out["note"] = self.note
        return out


def lake_counts(con: duckdb.DuckDBPyConnection) -> LakeCounts:
    """Data files, their bytes and delete files per table (the current snapshot), and snapshots."""
    rows = con.execute(f"SELECT table_name, file_count, file_size_bytes, delete_file_count "
                       f"FROM ducklake_table_info('{ALIAS}') ORDER BY table_name").fetchall()
    snapshots = con.execute(f"SELECT count(*) FROM ducklake_snapshots('{ALIAS}')").fetchone()[0]
    return LakeCounts(data_files=sum(int(r[1]) for r in rows), data_bytes=sum(int(r[2]) for r in rows),
                      delete_files=sum(int(r[3]) for r in rows), snapshots=int(snapshots),
                      files_by_table={r[0]: int(r[1]) for r in rows})


def snapshot_ids(con: duckdb.DuckDBPyConnection) -> list[int]:
    return [int(r[0]) for r in con.execute(f"SELECT snapshot_id FROM ducklake_snapshots('{ALIAS}') "
                                           "ORDER BY snapshot_id").fetchall()]


def maintain(con: duckdb.DuckDBPyConnection, *, now: datetime, snapshot_retention: timedelta,
             keep_snapshots: Iterable[int] = (), dry_run: bool = False, file_grace: timedelta = FILE_GRACE,
             sleep: Callable[[float], None] | None = None) -> MaintenanceResult:
    """Maintain the warehouse ``con`` is attached to (see the module's docstring): expire the
    snapshots taken before ``now - snapshot_retention`` except ``keep_snapshots`` and the latest,
    delete files unneeded (or unrecorded) since before ``now - file_grace``. ``dry_run``: report
    what would be expired and deleted, change nothing. ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("maintain needs a timezone-aware now (snapshot times are UTC)")
    if snapshot_retention < timedelta(0) or file_grace < timedelta(0):
        raise ValueError("snapshot_retention and file_grace must not be negative")
    if not is_lake_connection(con):
        if not dry_run:
            con.execute("CHECKPOINT")
        return MaintenanceResult("duckdb", dry_run, note=FILE_BACKEND_NOTE if not dry_run
                                 else "DuckDB file backend: would CHECKPOINT only")
    result = MaintenanceResult("ducklake", dry_run, before=lake_counts(con))
    result.tables_to_merge = [t for t, n in result.before.files_by_table.items()
                              if n > 1 and t in POOL_WRITTEN_TABLES]
    attempts = 0

    def step(what: str, statement: str, params: list | None = None, *, in_transaction: bool = True) -> list[tuple]:
        def once() -> list[tuple]:
            nonlocal attempts
            attempts += 1
            if not in_transaction:
                return con.execute(statement, params or []).fetchall()
            with transaction(con):
                return con.execute(statement, params or []).fetchall()
        runs_before = attempts
        rows = retry_on_conflict(once, what, **({"sleep": sleep} if sleep else {}))
        result.conflicts_retried += attempts - runs_before - 1
        return rows

    if not dry_run:
        step("flushing inlined data", f"CALL ducklake_flush_inlined_data('{ALIAS}')")
        for table in result.tables_to_merge:
            rewritten = step(f"rewriting {table}'s files with deleted rows",
                             f"CALL ducklake_rewrite_data_files('{ALIAS}', ?, "
                             f"delete_threshold => {REWRITE_DELETE_THRESHOLD})", [table])
            merged = step(f"merging {table}'s small files", f"CALL ducklake_merge_adjacent_files('{ALIAS}', ?)",
                          [table])
            # each row: (schema, table, files processed, files created)
            result.files_rewritten += sum(int(r[2]) for r in rewritten)
            result.files_merged += sum(int(r[2]) for r in merged)

    cutoff = now - snapshot_retention
    keep = {int(s) for s in keep_snapshots}
    # a snapshot is old once it is older than the retention and its successor was committed more
    # than the grace period ago: a transaction still reading it (opened before the successor) is
    # given as long as a reader's files are (a lake idle for days has an old latest snapshot that
    # this run's own commits turn into a predecessor of a moment ago)
    rows = con.execute(f"SELECT snapshot_id, snapshot_time < ? AND lead(snapshot_time) OVER (ORDER BY snapshot_id) < ? "
                       f"FROM ducklake_snapshots('{ALIAS}') ORDER BY snapshot_id",
                       [cutoff, now - file_grace]).fetchall()
    latest = rows[-1][0]
    old = [int(s) for s, is_old in rows if is_old and s != latest]
    result.snapshots_kept_for_exports = [s for s in old if s in keep]
    expire = [s for s in old if s not in keep]
    if expire:
        if dry_run:
            expired = con.execute(f"CALL ducklake_expire_snapshots('{ALIAS}', dry_run => true, versions => ?)",
                                  [expire]).fetchall()
        else:
            expired = step("expiring snapshots", f"CALL ducklake_expire_snapshots('{ALIAS}', versions => ?)",
                           [expire])
        result.snapshots_expired = sorted(int(r[0]) for r in expired)

    # files unneeded (or written) before this are past the grace period; these calls delete files,
    # so they run on their own (autocommitted), not in a transaction that could roll back after
    older_than = now - file_grace
    if dry_run:
        result.files_deleted = len(con.execute(f"CALL ducklake_cleanup_old_files('{ALIAS}', dry_run => true, "
                                               "older_than => ?)", [older_than]).fetchall())
        result.orphans_deleted = len(con.execute(f"CALL ducklake_delete_orphaned_files('{ALIAS}', dry_run => true, "
                                                 "older_than => ?)", [older_than]).fetchall())
        return result
    result.files_deleted = len(step("deleting files no snapshot needs",
                                    f"CALL ducklake_cleanup_old_files('{ALIAS}', older_than => ?)", [older_than],
                                    in_transaction=False))
    result.orphans_deleted = len(step("deleting orphaned files",
                                      f"CALL ducklake_delete_orphaned_files('{ALIAS}', older_than => ?)",
                                      [older_than], in_transaction=False))
    result.after = lake_counts(con)
    return result
