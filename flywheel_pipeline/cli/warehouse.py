"""``flywheel summary`` and ``flywheel sql``: reading the warehouse, opened read-only."""

from __future__ import annotations

import argparse
import shutil
import sys

from flywheel_pipeline import paths
from flywheel_pipeline.cli.options import add_parser, positive_int
from flywheel_pipeline.cli.output import say


def cmd_summary(args: argparse.Namespace) -> int:
    from flywheel_pipeline.cli.summary import print_summary

    if not paths.warehouse_exists():
        say(f"no warehouse at {paths.warehouse_path()}: run `flywheel demo` or `flywheel refresh` first")
        return 1
    print_summary(out=say)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run one query against the warehouse, opened read-only, and print its result: a table on
    the terminal (the first ``--max-rows`` rows, then how many rows the result has), or every
    row as CSV with ``--csv`` (streamed in chunks)."""
    import csv

    import duckdb

    from flywheel_pipeline.warehouse.lake import describe
    from flywheel_pipeline.warehouse.schema import open_configured

    database = describe(paths.warehouse_database())
    if not paths.warehouse_exists():
        print(f"flywheel sql: no warehouse at {database}: run `flywheel demo` or `flywheel refresh` first",
              file=sys.stderr)
        return 1
    try:
        con = open_configured(read_only=True)
    except duckdb.IOException as exc:
        print(f"flywheel sql: cannot open {database}: {exc}\n(DuckDB allows one writing process: wait for "
              "the Dagster run that holds it to finish)", file=sys.stderr)
        return 1
    try:
        if args.csv:
            result = con.execute(args.query)
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(column[0] for column in result.description)
            while rows := result.fetchmany(10_000):
                writer.writerows(rows)
        else:
            relation = con.sql(args.query)
            if relation is not None:  # None: a statement without a result
                _show(relation, args.max_rows)
    except duckdb.Error as exc:
        print(f"flywheel sql: {exc}", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


def _show(relation, max_rows: int) -> None:
    """The first ``max_rows`` rows as a table, then the result's real size. (DuckDB's own footer
    says "? rows" on a large result, and shows rows from the middle of its first 10,000 as if
    they were the last.)"""
    total = relation.aggregate("count(*)").fetchall()[0][0]
    relation.limit(max_rows).show(max_rows=max_rows + 1, max_width=shutil.get_terminal_size((160, 24)).columns)
    if total <= max_rows:
        say(f"{total:,} row{'' if total == 1 else 's'}")
    else:
        say(f"first {max_rows} of {total:,} rows shown (more with --max-rows, all with --csv)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = add_parser(sub, "summary", help="print what the warehouse holds")
    p.set_defaults(func=cmd_summary)
    p = add_parser(sub, "sql", help="query the warehouse read-only, e.g. "
                                    "flywheel sql 'SELECT stage, count(*) FROM outcome_labels GROUP BY 1'")
    p.add_argument("query", help="one SQL query (DuckDB dialect); the warehouse is opened read-only")
    p.add_argument("--csv", action="store_true", help="print every row as CSV (header first) instead of a table")
    p.add_argument("--max-rows", type=positive_int, default=40, help="rows shown in the table")
    p.set_defaults(func=cmd_sql)
