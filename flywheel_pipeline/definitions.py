"""The code location: every asset, check, job, sensor and schedule under ``defs/<domain>/``,
found by Dagster's ``load_from_defs_folder``, with resources bound by environment
(``FLYWHEEL_ENV=local`` (default) or ``production``, see defs/resources.py)."""

from __future__ import annotations

import functools
from pathlib import Path

import dagster as dg

from flywheel_pipeline.defs.resources import resources_for


@functools.cache
def _defs_folder() -> dg.Definitions:
    """The defs folder, loaded once per process (its modules are imported once anyway)."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


def build_definitions(environment: str | None = None) -> dg.Definitions:
    return dg.Definitions.merge(_defs_folder(), dg.Definitions(resources=resources_for(environment)))


defs = build_definitions()
