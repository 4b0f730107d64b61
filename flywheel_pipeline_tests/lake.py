"""The ducklake warehouse backend in tests: a scratch PostgreSQL database per test (created and
dropped here) as the DuckLake catalog and a temporary data directory. Skips with the reason
where no PostgreSQL server is usable (FLYWHEEL_TEST_PG_HOST, _PORT, _USER, _DB below)."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_HOST = os.environ.get("FLYWHEEL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FLYWHEEL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("FLYWHEEL_TEST_PG_USER", "postgres")
PG_DB = os.environ.get("FLYWHEEL_TEST_PG_DB", "test")


@dataclass(frozen=True)
class Target:
    """Where a test's warehouse lives: ``database`` as FLYWHEEL_WAREHOUSE takes it, ``data_path``."""

    backend: str
    database: str
    data_path: str | None = None

    def env(self) -> dict[str, str]:
        return {"FLYWHEEL_WAREHOUSE": self.database,
                **({"FLYWHEEL_WAREHOUSE_DATA_PATH": self.data_path} if self.data_path else {})}


def postgres_reason() -> str | None:
    """Why the ducklake tests cannot run here (None: they can)."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            pass
    except OSError as exc:
        return f"no PostgreSQL server at {PG_HOST}:{PG_PORT} ({exc})"
    try:
        import psycopg2

        psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DB, connect_timeout=5).close()
    except Exception as exc:  # noqa: BLE001 - any failure means the server is not usable here
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} refused {PG_USER}@{PG_DB}: {exc}"
    return None


def catalog_uri(dbname: str, *, port: int = PG_PORT) -> str:
    return f"ducklake:postgres:dbname={dbname} host={PG_HOST} port={port} user={PG_USER}"


@contextlib.contextmanager
def scratch_lake(data_dir: Path) -> Iterator[Target]:
    """A new DuckLake warehouse: an empty PostgreSQL database, dropped afterwards."""
    import psycopg2

    name = f"flywheel_lake_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DB)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        yield Target("ducklake", catalog_uri(name), str(data_dir))
    finally:
        from flywheel_pipeline.warehouse.lake import close_all

        close_all()  # this process's attachments to it
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
