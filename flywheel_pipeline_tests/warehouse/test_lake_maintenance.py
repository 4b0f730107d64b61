"""DuckLake maintenance (warehouse/lake_maintenance.py) on a real lake: a scratch PostgreSQL catalog
and a local data directory (skipped with the reason when PostgreSQL is absent), and the DuckDB
file backend's CHECKPOINT."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from flywheel_pipeline import paths
from flywheel_pipeline.warehouse import lake
from flywheel_pipeline.warehouse.datasets import (SelectionConfig, build_training_examples, export_jsonl,
                                                  exported_snapshots, redact_new_messages)
from flywheel_pipeline.warehouse.lake_maintenance import FILE_GRACE, maintain, snapshot_ids
from flywheel_pipeline.warehouse.schema import connect
from flywheel_pipeline_tests.conftest import T0, run_pipeline

NOW_ALL_OLD = timedelta(0)  # a retention of nothing: every snapshot but the latest is old


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _small_commits(con, n: int = 30, *, delete: bool = True) -> None:
    """``n`` small commits: 200-row inserts (a Parquet file each), a few inlined tiny inserts and
    a delete of a tenth of the rows, the shape of a warehouse fed every few seconds."""
    con.execute("CREATE TABLE email_events (i INTEGER, s VARCHAR)")
    con.execute("CREATE TABLE feedback (k INTEGER)")
    for k in range(n - 6):
        con.execute("INSERT INTO email_events SELECT range, 'e' || range FROM range(?, ?)", [k * 200, k * 200 + 200])
    for k in range(4):
        con.execute("INSERT INTO feedback VALUES (?)", [k])  # ten rows or fewer: kept in the catalog
    if delete:
        con.execute("DELETE FROM email_events WHERE i % 10 = 0")


def _contents(con) -> dict[str, list]:
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
                                        "ORDER BY 1", [lake.ALIAS]).fetchall()]
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in tables}


def _files_on_disk(target) -> set[str]:
    return {str(p) for p in Path(target.data_path).rglob("*.parquet")}


def test_maintenance_merges_small_files_and_every_table_reads_the_same(lake_target):
    con = lake.connect(lake_target.database, lake_target.data_path)
    _small_commits(con)
    before, on_disk = _contents(con), _files_on_disk(lake_target)
    result = maintain(con, now=_now(), snapshot_retention=NOW_ALL_OLD, file_grace=timedelta(0))
    assert result.backend == "ducklake" and not result.dry_run
    assert result.before.data_files >= 24 and result.after.data_files <= 3, result.summary()
    assert result.files_rewritten + result.files_merged >= 23 and result.conflicts_retried == 0
    assert result.after.snapshots < result.before.snapshots >= 30
    assert _contents(con) == before
    # the files this run retired go at a later run, past the grace period (the next day's)
    again = maintain(con, now=_now() + 2 * FILE_GRACE, snapshot_retention=NOW_ALL_OLD)
    assert again.files_deleted >= 23 and len(_files_on_disk(lake_target)) <= len(on_disk) - 20
    assert _contents(con) == before
    summary = again.summary()
    assert summary["data_files_after"] == again.after.data_files and "files_deleted" in summary
    con.close()


def test_a_snapshot_expires_only_once_its_successor_is_past_the_grace(lake_target):
    """A transaction may still read a snapshot until its successor is older than the grace
    period: a retention of nothing expires none of the snapshots committed a moment ago, the
    same run a day later all but the latest."""
    con = lake.connect(lake_target.database, lake_target.data_path)
    _small_commits(con, n=10, delete=False)
    snapshots = snapshot_ids(con)
    dry = maintain(con, now=_now(), snapshot_retention=NOW_ALL_OLD, dry_run=True)
    assert dry.snapshots_expired == [] and snapshot_ids(con) == snapshots
    later = maintain(con, now=_now() + timedelta(days=1), snapshot_retention=NOW_ALL_OLD, dry_run=True)
    assert later.snapshots_expired == snapshots[:-1]
    con.close()


def test_tables_written_outside_the_pool_are_not_merged(lake_target):
    """model_registry (the control API writes it without the warehouse pool) keeps its files: a
    merge racing one of its small updates would lose the update (the DuckLake 1.5.5 fault above)."""
    from flywheel_pipeline.warehouse.lake_maintenance import POOL_WRITTEN_TABLES

    assert "model_registry" not in POOL_WRITTEN_TABLES and "email_events" in POOL_WRITTEN_TABLES
    con = lake.connect(lake_target.database, lake_target.data_path)
    _small_commits(con, delete=False)
    con.execute("CREATE TABLE model_registry (k INTEGER, status VARCHAR)")
    for k in range(6):
        con.execute("INSERT INTO model_registry SELECT range, 'ready' FROM range(?, ?)", [k * 100, k * 100 + 100])
    result = maintain(con, now=_now(), snapshot_retention=NOW_ALL_OLD, file_grace=timedelta(0))
    assert result.tables_to_merge == ["email_events"]
    assert result.before.files_by_table["model_registry"] == result.after.files_by_table["model_registry"] == 6
    assert result.after.files_by_table["email_events"] == 1 < result.before.files_by_table["email_events"]
    con.close()


def test_an_exported_snapshot_survives_and_rebuilds_byte_identical_while_others_expire(tmp_path, lake_target):
    from flywheel_pipeline.simulator import SimConfig, simulate

    landing, exports = tmp_path / "landing", tmp_path / "exports"
    simulate(landing, SimConfig(seed=21, days=16, end=date(2026, 5, 1), organizations=2, leads_per_org=80,
                                messages_per_day=20))
    con = connect(lake_target.database, data_path=lake_target.data_path)
    run_pipeline(con, landing, as_of=T0.replace(month=5, day=1))
    redact_new_messages(con)
    build_training_examples(con, SelectionConfig())
    first = export_jsonl(con, exports, ["sft", "trl_kto"])
    for q in (0.5, 0.55, 0.65):  # the warehouse moves on: other selections, small commits
        build_training_examples(con, SelectionConfig(min_quality_score=q))
    keep = exported_snapshots(exports)
    assert keep == {first.snapshot}
    earlier = [s for s in snapshot_ids(con) if s < first.snapshot]
    result = maintain(con, now=_now(), snapshot_retention=NOW_ALL_OLD, keep_snapshots=keep,
                      file_grace=timedelta(0))
    later = maintain(con, now=_now() + 2 * FILE_GRACE, snapshot_retention=NOW_ALL_OLD, keep_snapshots=keep)
    assert later.files_deleted > 0  # files no kept snapshot needs are gone, the kept one's stay
    left = snapshot_ids(con)
    assert first.snapshot in left and result.snapshots_kept_for_exports == [first.snapshot]
    assert not set(earlier) & set(left) and len(left) <= 4, left
    con.close()
    # re-exporting from the kept snapshot writes the same bytes
    at = connect(lake_target.database, data_path=lake_target.data_path, snapshot=first.snapshot)
    rebuilt = export_jsonl(at, tmp_path / "rebuilt", ["sft", "trl_kto"])
    at.close()
    assert rebuilt.version == first.version
    for name, path in first.files.items():
        assert rebuilt.files[name].read_bytes() == path.read_bytes(), name
    # an expired snapshot is gone, said in one line
    lake.close_all()
    with pytest.raises(ValueError, match="no such warehouse snapshot"):
        connect(lake_target.database, data_path=lake_target.data_path, snapshot=earlier[-1])


class _WriterCommitsFirst:
    """The maintenance run's connection, with another process's writer that commits a delete on
    the table being compacted just before the compaction's COMMIT: the worst moment, every time."""

    def __init__(self, con, writer, statement: str):
        self._con, self._writer, self._statement = con, writer, statement
        self._merging = False
        self.writer_commits = 0

    def execute(self, sql: str, params=None):
        if "ducklake_rewrite_data_files" in sql:
            self._merging = True
        elif sql == "COMMIT" and self._merging and self.writer_commits == 0:
            self._writer.execute(self._statement)
            self.writer_commits += 1
        return self._con.execute(sql, params or [])


def test_a_run_concurrent_with_a_writer_is_retried_not_lost(lake_target):
    con = lake.connect(lake_target.database, lake_target.data_path)
    writer = lake.connect(lake_target.database, lake_target.data_path)
    _small_commits(con)
    expected = _contents(con)
    expected["email_events"] = [r for r in expected["email_events"] if r[0] >= 1000]
    racing = _WriterCommitsFirst(con, writer, "DELETE FROM email_events WHERE i < 1000")  # a Parquet delete file
    result = maintain(racing, now=_now(), snapshot_retention=NOW_ALL_OLD, file_grace=timedelta(0),
                      sleep=lambda s: None)
    assert racing.writer_commits == 1 and result.conflicts_retried == 1, result.summary()
    assert result.after.data_files <= 3  # the compaction was redone after the writer's commit, not given up
    assert _contents(con) == expected  # and the writer's delete stands
    writer.close()
    con.close()


def test_a_dry_run_changes_nothing(lake_target):
    con = lake.connect(lake_target.database, lake_target.data_path)
    _small_commits(con)
    snapshots, contents, on_disk = snapshot_ids(con), _contents(con), _files_on_disk(lake_target)
    info = con.execute(f"SELECT * FROM ducklake_table_info('{lake.ALIAS}') ORDER BY ALL").fetchall()
    result = maintain(con, now=_now() + timedelta(days=1), snapshot_retention=NOW_ALL_OLD, dry_run=True,
                      file_grace=timedelta(0))
    assert result.dry_run and result.after is None and result.files_merged == 0
    assert result.snapshots_expired == snapshots[:-1] and result.tables_to_merge == ["email_events"]
    assert snapshot_ids(con) == snapshots and _contents(con) == contents and _files_on_disk(lake_target) == on_disk
    assert con.execute(f"SELECT * FROM ducklake_table_info('{lake.ALIAS}') ORDER BY ALL").fetchall() == info
    con.close()


def test_the_file_backend_only_checkpoints(tmp_path):
    con = connect(tmp_path / "wh.duckdb")
    result = maintain(con, now=_now(), snapshot_retention=timedelta(days=7))
    assert result.backend == "duckdb" and "CHECKPOINT only" in result.note and result.before is None
    assert maintain(con, now=_now(), snapshot_retention=timedelta(days=7), dry_run=True).note.startswith(
        "DuckDB file backend: would CHECKPOINT")
    with pytest.raises(ValueError, match="timezone-aware"):
        maintain(con, now=datetime.now(), snapshot_retention=timedelta(days=7))
    con.close()


def test_exported_snapshots_come_from_the_manifests(tmp_path):
    root = tmp_path / "exports"
    assert exported_snapshots(root) == set()  # no exports yet
    for name, manifest in (("a", {"warehouse_snapshot": 12}), ("b", {"warehouse_snapshot": 40}),
                           ("c", {"warehouse_snapshot": None, "warehouse_snapshot_note": "file backend"}),
                           (".tmp-x", {"warehouse_snapshot": 99})):
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text(json.dumps(manifest))
    assert exported_snapshots(root) == {12, 40}
    (root / "d").mkdir()
    (root / "d" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read the export manifest .*d/manifest.json"):
        exported_snapshots(root)
    (root / "d" / "manifest.json").write_text(json.dumps({"warehouse_snapshot": "7"}))
    with pytest.raises(ValueError, match="no valid warehouse_snapshot"):
        exported_snapshots(root)


@pytest.mark.parametrize("raw", ["0", "-3", "seven", "1.5"])
def test_the_retention_setting_is_a_whole_number_of_days(raw):
    assert paths.lake_snapshot_retention_days({}) == 7
    assert paths.lake_snapshot_retention_days({"FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS": "30"}) == 30
    with pytest.raises(ValueError, match="FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS must be a whole number of days "
                                         f"of at least 1, got '{raw}'"):
        paths.lake_snapshot_retention_days({"FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS": raw})


def test_ducklake_1_5_5_loses_a_small_delete_committed_during_a_merge(lake_target):
    """Why maintenance runs in the warehouse pool, never beside a writer: with DuckLake 1.5.5 a
    delete of ten rows or fewer (kept inlined in the catalog) that commits while a merge of the
    same table is in flight is lost, and neither side gets a conflict. When this fails, DuckLake
    fixed it: the pool may then be relaxed (docs/scaling.md, Maintenance)."""
    con = lake.connect(lake_target.database, lake_target.data_path)
    writer = lake.connect(lake_target.database, lake_target.data_path)
    _small_commits(con, delete=False)
    con.execute("BEGIN")
    con.execute(f"CALL ducklake_merge_adjacent_files('{lake.ALIAS}')")
    writer.execute("DELETE FROM email_events WHERE i = 5")
    con.execute("COMMIT")  # no conflict
    assert con.execute("SELECT count(*) FROM email_events WHERE i = 5").fetchone()[0] == 1
    writer.close()
    con.close()
