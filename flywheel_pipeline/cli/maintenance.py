"""``flywheel maintain``: the warehouse's storage maintenance (warehouse/lake_maintenance.py) through
the ``maintenance`` job, which waits for the warehouse pool like every writing run; with
``--dry-run`` only what it would do, read here without a run."""

from __future__ import annotations

import argparse

from flywheel_pipeline.cli.options import add_parser, add_verbose, positive_int
from flywheel_pipeline.cli.output import complain, say


def _retention_days(args: argparse.Namespace) -> int:
    from flywheel_pipeline import paths

    return args.retention_days or paths.lake_snapshot_retention_days()


def cmd_maintain(args: argparse.Namespace) -> int:
    from flywheel_pipeline import paths
    from flywheel_pipeline.warehouse.datasets import exported_snapshots
    from flywheel_pipeline.warehouse.lake import describe

    try:
        days = _retention_days(args)
        keep = exported_snapshots(paths.exports_dir())
    except ValueError as exc:
        complain("maintain", str(exc))
        return 2
    if not paths.warehouse_exists():
        complain("maintain", f"no warehouse at {paths.warehouse_path()}: run `flywheel demo` or `flywheel refresh` "
                             "first")
        return 1
    if paths.warehouse_is_file():
        say(f"Warehouse {describe(paths.warehouse_database())} (a DuckDB file: no snapshots to expire)")
    else:
        say(f"Warehouse {describe(paths.warehouse_database())}: snapshots older than {days} days expire, except "
            f"the {len(keep)} that exports name")
    if args.dry_run:
        return _dry_run(days, keep)
    from flywheel_pipeline.cli.jobs import run_job
    from flywheel_pipeline.defs.maintenance.automation import MAINTENANCE_JOB_NAME

    run = run_job(MAINTENANCE_JOB_NAME, {"ops": {"lake_maintenance": {"config": {"retention_days": days}}}},
                  verbose=args.verbose)
    if run:
        say_maintenance(run.outputs.get("lake_maintenance") or {})
    return 0 if run else 1


def say_maintenance(m: dict) -> None:
    """What a maintenance run did, from its metadata."""
    if m.get("backend") != "ducklake":
        say(f"  {m.get('note', '')}")
        return
    say(f"  data files {m['data_files_before']:,} -> {m['data_files_after']:,} "
        f"({m['data_bytes_before']:,} -> {m['data_bytes_after']:,} bytes), delete files "
        f"{m['delete_files_before']:,} -> {m['delete_files_after']:,}, snapshots {m['snapshots_before']:,} -> "
        f"{m['snapshots_after']:,}")
    kept = m.get("snapshots_kept_for_exports") or []
    say(f"  {m['files_rewritten']} files with deleted rows rewritten, {m['files_merged']} small files merged; "
        f"{m['snapshots_expired']} snapshots expired" + (f" (kept for exports: {', '.join(map(str, kept))})"
                                                         if kept else ""))
    say(f"  {m['files_deleted']} files no snapshot needs and {m['orphans_deleted']} orphaned files deleted (files "
        "retired by this run are deleted by a run at least an hour later); "
        f"{m['conflicts_retried']} write conflicts retried")


def _dry_run(days: int, keep: set[int]) -> int:
    from datetime import datetime, timedelta, timezone

    from flywheel_pipeline import paths
    from flywheel_pipeline.warehouse.lake_maintenance import maintain
    from flywheel_pipeline.warehouse.schema import open_configured

    # DuckLake's orphaned-file dry run writes a scratch table into the lake: it needs a writable
    # attachment (nothing of the warehouse changes, not even its schema: an outdated one is refused);
    # the DuckDB file is opened read-only
    con = open_configured(read_only=paths.warehouse_is_file(), migrate_schema=False)
    try:
        result = maintain(con, now=datetime.now(timezone.utc), snapshot_retention=timedelta(days=days),
                          keep_snapshots=keep, dry_run=True)
    finally:
        con.close()
    if result.backend != "ducklake":
        say(f"  {result.note}; nothing changed (dry run)")
        return 0
    b = result.before
    say(f"  now: {b.data_files:,} data files ({b.data_bytes:,} bytes), {b.delete_files:,} delete files, "
        f"{b.snapshots:,} snapshots")
    say(f"  would merge the small files of {len(result.tables_to_merge)} tables"
        + (f" ({', '.join(result.tables_to_merge)})" if result.tables_to_merge else "")
        + f", expire {len(result.snapshots_expired)} snapshots"
        + (f" (kept for exports: {', '.join(map(str, result.snapshots_kept_for_exports))})"
           if result.snapshots_kept_for_exports else "")
        + f", delete {result.files_deleted} files no snapshot needs and {result.orphans_deleted} orphaned files")
    say("  nothing changed (dry run)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "maintain", help="maintain the warehouse's storage: merge DuckLake's small files, expire "
                                         "old snapshots (keeping those exports name), delete unneeded files "
                                         "(CHECKPOINT on a DuckDB file)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be merged, expired and deleted")
    p.add_argument("--retention-days", type=positive_int, metavar="DAYS",
                   help="expire snapshots older than this many days (default: "
                        "FLYWHEEL_LAKE_SNAPSHOT_RETENTION_DAYS, else 7)")
    add_verbose(p)
    p.set_defaults(func=cmd_maintain)
