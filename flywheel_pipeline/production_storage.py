"""The production Dagster instance's storage (top-level ``dagster.yaml``): dagster-postgres with
its connection taken from ``DAGSTER_PG_HOST``, ``DAGSTER_PG_PORT`` (default 5432),
``DAGSTER_PG_USER``, ``DAGSTER_PG_PASSWORD`` (optional, e.g. with trust or peer auth) and
``DAGSTER_PG_DB``. Where they are not set (``dagster dev`` run in the checkout without
``DAGSTER_HOME``, say) it stops with one line that says what to set, instead of a traceback."""

from __future__ import annotations

import os

from dagster import Field
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_conn_string

REQUIRED = ("DAGSTER_PG_HOST", "DAGSTER_PG_USER", "DAGSTER_PG_DB")


def missing_settings(env=None) -> list[str]:
    env = os.environ if env is None else env
    return [name for name in REQUIRED if not env.get(name)]


class ProductionPostgresStorage(DagsterPostgresStorage):
    @classmethod
    def config_type(cls):
        # SQLAlchemy 2.1 maps plain "postgresql" to psycopg 3; dagster-postgres ships psycopg2
        return {"scheme": Field(str, is_required=False, default_value="postgresql+psycopg2")}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        missing = missing_settings()
        if missing:
            raise SystemExit(
                f"dagster.yaml here is the production instance (PostgreSQL) and {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: set DAGSTER_PG_HOST, DAGSTER_PG_PORT, "
                "DAGSTER_PG_USER, DAGSTER_PG_PASSWORD and DAGSTER_PG_DB (README, Production), or run "
                "`flywheel ui` (or `make ui`) for the local instance under $FLYWHEEL_HOME/dagster")
        url = get_conn_string(username=os.environ["DAGSTER_PG_USER"],
                              password=os.environ.get("DAGSTER_PG_PASSWORD", ""),
                              hostname=os.environ["DAGSTER_PG_HOST"], db_name=os.environ["DAGSTER_PG_DB"],
                              port=os.environ.get("DAGSTER_PG_PORT") or "5432", scheme=config_value["scheme"])
        return cls(postgres_url=url, inst_data=inst_data)
