"""The assets and checks of some domains, taken from the code location as Dagster loads it
(defs/<domain>/ via load_from_defs_folder), for tests that materialize part of the graph."""

from __future__ import annotations

import functools

import dagster as dg


@functools.cache
def _loaded() -> dg.Definitions:
    from flywheel_pipeline.definitions import build_definitions

    return build_definitions("local")


def assets_of(*groups: str) -> list:
    """The assets of the given groups (domains), with the checks on them."""
    defs = _loaded()
    # a module that imports another domain's asset (for deps) shows it again: one of each
    assets = list({id(a): a for a in defs.assets
                   if isinstance(a, dg.AssetsDefinition) and set(a.group_names_by_key.values()) <= set(groups)
                   }.values())
    keys = {k for a in assets for k in a.keys}
    checks = list({id(c): c for c in defs.asset_checks or []
                   if {k.asset_key for k in c.check_keys} <= keys}.values())
    return assets + checks


def only_assets_of(*groups: str) -> list:
    """The assets of the given groups, without checks."""
    return [a for a in assets_of(*groups) if not isinstance(a, dg.AssetChecksDefinition)]


def checks_of(*groups: str) -> list:
    """The checks on the assets of the given groups."""
    return [a for a in assets_of(*groups) if isinstance(a, dg.AssetChecksDefinition)]
