"""Resources, configured per environment (see definitions.py)."""

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from flywheel_pipeline import paths
from flywheel_pipeline.core.label_policy import DEFAULT_STAGE_SCORES, LabelPolicy
from flywheel_pipeline.warehouse import schema

WAREHOUSE_POOL = "duckdb_warehouse"


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse. Connections are short-lived: DuckDB allows one writing process
    per file, so every asset that writes it is in the ``duckdb_warehouse`` pool (limit 1),
    and a connection that finds the file locked by another process retries for a while."""

    database: str = Field(description="Path of the DuckDB file (or an md: MotherDuck URL).")
    memory_limit: str | None = Field(None, description="DuckDB memory_limit, e.g. '2GB'.")
    threads: int | None = Field(None, description="DuckDB threads (default: all cores).")
    lock_timeout_s: float = Field(120.0, description="How long to wait for another process's lock.")

    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.2
        while True:
            try:
                con = schema.connect(self.database, read_only=read_only,
                                     memory_limit=self.memory_limit, threads=self.threads)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            yield con
        finally:
            con.close()


class LandingZoneResource(dg.ConfigurableResource):
    """The landing zone: ``<path>/<source>/*.jsonl`` (see core/landing.py)."""

    path: str

    @property
    def root(self) -> Path:
        return Path(self.path)


class ExportsResource(dg.ConfigurableResource):
    """Where fine-tuning files go: ``<path>/<dataset_version>/``."""

    path: str


class LabelPolicyResource(dg.ConfigurableResource):
    """The outcome-labelling policy (docs/labelling.md); defaults are the product's policy."""

    stage_scores: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_STAGE_SCORES))
    deal_bonus: float = 0.1
    deal_value_cap: float = 50_000.0
    negative_score: float = 0.0
    maturity_days: int = 14
    scanner_click_window_s: float = 5.0
    attribution_window_days: int = 90

    def policy(self) -> LabelPolicy:
        return LabelPolicy(**{name: getattr(self, name) for name in LabelPolicy.model_fields})


def local_resources() -> dict[str, dg.ConfigurableResource]:
    """Embedded defaults: everything under $FLYWHEEL_HOME."""
    return {
        "warehouse": WarehouseResource(database=str(paths.warehouse_path())),
        "landing": LandingZoneResource(path=str(paths.landing_dir())),
        "label_policy": LabelPolicyResource(),
        "exports": ExportsResource(path=str(paths.flywheel_home() / "exports")),
    }


def production_resources() -> dict[str, dg.ConfigurableResource]:
    """Production: locations and limits from the environment (secrets never in code)."""
    return {
        "warehouse": WarehouseResource(database=dg.EnvVar("FLYWHEEL_WAREHOUSE"),
                                       memory_limit=os.environ.get("FLYWHEEL_DUCKDB_MEMORY_LIMIT")),
        "landing": LandingZoneResource(path=dg.EnvVar("FLYWHEEL_LANDING")),
        "label_policy": LabelPolicyResource(),
        "exports": ExportsResource(path=dg.EnvVar("FLYWHEEL_EXPORTS")),
    }
