"""The production instance config (top-level dagster.yaml, dagster-postgres) on a real
PostgreSQL server. Skips with a reason where no server listens on 127.0.0.1:5432."""

from __future__ import annotations

import shutil
import uuid
from datetime import date

import dagster as dg
import pytest

from flywheel_pipeline.simulator import SimConfig, simulate
from flywheel_pipeline.defs.resources import LabelPolicyResource, LandingZoneResource, WarehouseResource
from flywheel_pipeline_tests.domains import assets_of
from flywheel_pipeline_tests.conftest import REPO
from flywheel_pipeline_tests.lake import PG_DB, PG_HOST, PG_PORT, PG_USER, postgres_reason

_REASON = postgres_reason()
pytestmark = [pytest.mark.postgres, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture
def scratch_database():
    """A fresh database per test, dropped afterwards, so runs never mix between tests."""
    import psycopg2

    name = f"flywheel_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DB)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_production_instance_on_postgres_records_a_materialization(tmp_path, monkeypatch, scratch_database):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_HOST", PG_HOST)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(PG_PORT))
    monkeypatch.setenv("DAGSTER_PG_USER", PG_USER)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-with-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_DB", scratch_database)

    simulate(tmp_path / "landing", SimConfig(seed=9, days=3, end=date(2026, 5, 1), organizations=1,
                                             leads_per_org=50, messages_per_day=15))
    resources = {"warehouse": WarehouseResource(database=str(tmp_path / "wh.duckdb")),
                 "landing": LandingZoneResource(path=str(tmp_path / "landing")),
                 "label_policy": LabelPolicyResource()}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = dg.materialize(assets_of("ingest", "outcomes"), instance=instance,
                                resources=resources)
        assert result.success
        run_id = result.run_id

    # a new instance (a new process in production) reads the run back from PostgreSQL
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(dg.AssetKey("outcome_labels"))
        assert event is not None and event.run_id == run_id
        assert event.asset_materialization.metadata["dagster/row_count"].value == 45
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("outcome_labels"), "one_label_per_message")])
        assert check

    import psycopg2

    with psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=scratch_database) as pg:
        cur = pg.cursor()
        cur.execute("SELECT count(*) FROM runs WHERE run_id = %s", (run_id,))
        assert cur.fetchone()[0] == 1
    pg.close()
