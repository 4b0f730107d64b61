"""The ``ducklake`` warehouse backend: a DuckLake catalog in PostgreSQL, data in a directory or S3.

``FLYWHEEL_WAREHOUSE=ducklake:postgres:dbname=... host=... user=...`` names the catalog (libpq
key=value form), ``FLYWHEEL_WAREHOUSE_DATA_PATH`` the Parquet files' home (a directory or
``s3://bucket/prefix/``; S3 credentials and endpoint from the standard ``AWS_*`` variables). A
connection is an in-memory DuckDB with the extensions loaded from their PyPI packages
(warehouse/extensions.py), the lake attached as ``flywheel_lake`` and made current (``USE``), so
every query of warehouse/ runs unchanged. Temporary tables stay in the in-memory database.

DuckLake has no PRIMARY KEY/UNIQUE constraints, sequences or user types: the DDL is adapted by
``lake_ddl`` (keys dropped, the ENUM column stored as VARCHAR, the ENUM type itself created in
the connection's memory database so casts still check values), and the queries of warehouse/
keep keys with anti-joins and allocate ids from ``warehouse_counters`` (schema.py).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import duckdb

from flywheel_pipeline.warehouse import extensions

PREFIX = "ducklake:"
ALIAS = "flywheel_lake"  # not a name a DuckDB file gets (a file flywheel.duckdb is database "flywheel")
_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)")


def is_lake(database: str) -> bool:
    return str(database).startswith(PREFIX)


def mask(text: str) -> str:
    """``text`` with every password (``password=...`` or ``user:secret@``) replaced by ``***``."""
    return _URI_PASSWORD.sub(r"\1***\2", _PASSWORD.sub(r"\1***", str(text)))


class WarehouseUnreachable(RuntimeError):
    """The warehouse's catalog database or its data storage cannot be reached (message masked)."""


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def describe(database: str) -> str:
    """The warehouse named for a person: the URI with its password masked."""
    return mask(database)


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None
    key_id: str | None
    secret: str | None
    region: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env
        return cls(env.get("AWS_ENDPOINT_URL") or None, env.get("AWS_ACCESS_KEY_ID") or None,
                   env.get("AWS_SECRET_ACCESS_KEY") or None,
                   env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None)

    def secret_sql(self, name: str = "flywheel_s3") -> str:
        """A DuckDB S3 secret (path-style URLs when an endpoint is given: any S3-compatible store)."""
        options = ["TYPE s3"]
        if self.key_id:
            options.append(f"KEY_ID {_quote(self.key_id)}")
        if self.secret:
            options.append(f"SECRET {_quote(self.secret)}")
        if self.region:
            options.append(f"REGION {_quote(self.region)}")
        if self.endpoint:
            url = urlparse(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
            options += [f"ENDPOINT {_quote(url.netloc)}", "URL_STYLE 'path'",
                        f"USE_SSL {'true' if url.scheme == 'https' else 'false'}"]
        return f"CREATE OR REPLACE SECRET {name} ({', '.join(options)})"


# One DuckDB instance per process and attachment (extensions loaded, lake attached once: about
# 0.4 s); every connection is a cursor of it, with its own transactions and temporary tables.
_INSTANCES: dict[tuple, duckdb.DuckDBPyConnection] = {}
_INSTANCES_LOCK = threading.Lock()


def connect(database: str, data_path: str | None, *, read_only: bool = False, snapshot: int | None = None,
            memory_limit: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A connection with the lake attached and current (``snapshot``: as of that snapshot,
    read-only). Raises WarehouseUnreachable (password masked) when the catalog or the data path
    cannot be reached."""
    if not is_lake(database):
        raise ValueError(f"not a DuckLake URI: {describe(database)}")
    key = (os.getpid(), database, data_path, read_only or snapshot is not None, snapshot, memory_limit, threads)
    with _INSTANCES_LOCK:
        base = _INSTANCES.get(key)
        if base is None:
            base = _open_instance(database, data_path, read_only=read_only, snapshot=snapshot,
                                  memory_limit=memory_limit, threads=threads)
            _INSTANCES[key] = base
        con = base.cursor()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"USE {ALIAS}")
        con.execute(f"SET search_path = '{ALIAS}.main,memory.main'")
    except duckdb.Error as exc:
        con.close()
        raise unreachable(database, data_path, exc) from None
    return con


# A new catalog is created by the first ATTACH, and DuckLake's creation is not safe against
# another process creating it at the same moment: the later one fails with "relation
# ducklake_metadata already exists" (or PostgreSQL's duplicate key on pg_type) once the first
# one's creating transaction committed. Attaching again then opens the catalog the other made.
ATTACH_ATTEMPTS = 5
ATTACH_RETRY_DELAY_S = 0.2


class _LostCreationRace(Exception):
    """The ATTACH lost the race to create a new DuckLake catalog to another process."""

    def __init__(self, error: duckdb.Error):
        super().__init__(str(error))
        self.error = error


def is_creation_race(exc: BaseException) -> bool:
    """An ATTACH that lost the race to create a new DuckLake catalog to another process."""
    text = str(exc).lower()
    return "failed to initialize ducklake" in text and ("already exists" in text or "duplicate key" in text)


def _open_instance(database: str, data_path: str | None, *, read_only: bool, snapshot: int | None,
                   memory_limit: str | None, threads: int | None) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with the lake attached (attached again, on a fresh instance, while it
    lost the race to create a new catalog: at most ATTACH_ATTEMPTS times)."""
    for attempt in range(1, ATTACH_ATTEMPTS + 1):
        try:
            return _attach_instance(database, data_path, read_only=read_only, snapshot=snapshot,
                                    memory_limit=memory_limit, threads=threads)
        except _LostCreationRace as lost:
            if attempt == ATTACH_ATTEMPTS:
                raise unreachable(database, data_path, lost.error) from None
            time.sleep(ATTACH_RETRY_DELAY_S * attempt)
    raise AssertionError("unreachable")


def _attach_instance(database: str, data_path: str | None, *, read_only: bool, snapshot: int | None,
                     memory_limit: str | None, threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config=dict(extensions.OFFLINE_CONFIG))
    try:
        extensions.load(con)
        if memory_limit:
            con.execute(f"SET memory_limit = {_quote(memory_limit)}")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        if data_path and data_path.startswith("s3://"):
            con.execute(S3Settings.from_env().secret_sql())
        options = []
        if data_path:
            options.append(f"DATA_PATH {_quote(_directory(data_path))}")
        if read_only or snapshot is not None:
            options.append("READ_ONLY")
        if snapshot is not None:
            options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
        try:
            con.execute(f"ATTACH {_quote(database)} AS {ALIAS}" + (f" ({', '.join(options)})" if options else ""))
        except duckdb.Error as exc:
            if is_creation_race(exc):
                raise _LostCreationRace(exc) from None
            raise unreachable(database, data_path, exc) from None
        # the ENUM of email events lives in the memory database (DuckLake stores the column as
        # VARCHAR); the search path finds it, so `::sendgrid_event` casts still check values
        from flywheel_pipeline.warehouse.schema import SENDGRID_EVENTS

        con.execute(f"CREATE TYPE memory.main.sendgrid_event AS ENUM {SENDGRID_EVENTS}")
    except BaseException:
        con.close()
        raise
    return con


def close_all() -> None:
    """Close this process's lake instances (tests dropping their catalog database)."""
    with _INSTANCES_LOCK:
        for con in _INSTANCES.values():
            con.close()
        _INSTANCES.clear()


def _directory(data_path: str) -> str:
    return data_path if data_path.endswith("/") else data_path + "/"


def unreachable(database: str, data_path: str | None, exc: BaseException) -> Exception:
    """One line naming what could not be reached, credentials masked."""
    text = mask(str(exc))
    first = " ".join(line.strip() for line in text.splitlines() if line.strip())
    if "creating a new ducklake is explicitly disabled" in text.lower():
        return WarehouseUnreachable(f"the DuckLake catalog ({describe(database)[len(PREFIX):]}) holds no warehouse "
                                    "yet: run `flywheel refresh` first")
    if "snapshot" in text.lower() and "version" in text.lower():
        return ValueError(f"no such warehouse snapshot: {first}")
    where = (f"the data path {data_path}" if data_path and data_path.lower() in text.lower()
             and "postgres" not in text.lower() else f"the DuckLake catalog database ({describe(database)[len(PREFIX):]})")
    return WarehouseUnreachable(f"cannot reach {where}: {first[:400]}")


def is_lake_connection(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con``'s current database is a DuckLake (not a DuckDB file)."""
    return con.execute("SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
                       ).fetchall()[0][0] == "ducklake"


def current_snapshot(con: duckdb.DuckDBPyConnection) -> int | None:
    """The lake's snapshot this connection reads (None on the DuckDB file backend, which keeps none)."""
    if not is_lake_connection(con):
        return None
    return int(con.execute(f"SELECT id FROM {ALIAS}.current_snapshot()").fetchone()[0])


_DDL_KEY = re.compile(r",\s*PRIMARY KEY\s*\([^)]*\)|\s+PRIMARY KEY\b", re.IGNORECASE)


def lake_ddl(statement: str) -> str | None:
    """``statement`` as DuckLake takes it: no keys, no sequences, no user types (None: skip it)."""
    head = statement.lstrip().upper()
    if head.startswith(("CREATE SEQUENCE", "CREATE TYPE")):
        return None
    return _DDL_KEY.sub("", statement).replace(" sendgrid_event ", " VARCHAR ")
