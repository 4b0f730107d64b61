"""DuckDB extensions from PyPI, loaded offline.

The warehouse's extensions come from the packages pinned in pyproject (``duckdb-extension-ducklake``,
``-postgres-scanner``, ``-httpfs``, one release per DuckDB version), each shipping its file at
``<package>/extensions/v<duckdb version>/<name>.duckdb_extension``. Every connection the
warehouse opens turns DuckDB's automatic install and load off (``OFFLINE_CONFIG``) and LOADs
these files by path, so nothing is fetched at run time; a missing package is one clear error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import duckdb

# extension name -> (import name, PyPI name) of the package that ships it
PACKAGES: dict[str, tuple[str, str]] = {
    "ducklake": ("duckdb_extension_ducklake", "duckdb-extension-ducklake"),
    "postgres_scanner": ("duckdb_extension_postgres_scanner", "duckdb-extension-postgres-scanner"),
    "httpfs": ("duckdb_extension_httpfs", "duckdb-extension-httpfs"),
}
# what a DuckLake warehouse needs: the lake, its PostgreSQL catalog, and S3 for data in object storage
LAKE_EXTENSIONS = ("ducklake", "postgres_scanner", "httpfs")

# DuckDB settings of every warehouse connection: never download or auto-load an extension
OFFLINE_CONFIG: dict[str, str | bool] = {"autoinstall_known_extensions": False,
                                         "autoload_known_extensions": False}


class MissingExtension(RuntimeError):
    """An extension's package is not installed (or has no file for this DuckDB version)."""


def extension_file(name: str) -> Path:
    """The extension file shipped by ``name``'s package for the running DuckDB version."""
    if name not in PACKAGES:
        raise ValueError(f"unknown extension {name!r}; expected one of {sorted(PACKAGES)}")
    module, dist = PACKAGES[name]
    version = duckdb.__version__
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtension(f"the DuckDB extension {name} is not installed: pip install '{dist}=={version}'")
    path = Path(next(iter(spec.submodule_search_locations))) / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    if not path.is_file():
        raise MissingExtension(f"{dist} has no {name} extension for DuckDB {version} (expected {path}): "
                               f"pip install '{dist}=={version}'")
    return path


def load(con: duckdb.DuckDBPyConnection, names: tuple[str, ...] = LAKE_EXTENSIONS) -> None:
    """LOAD each extension from its package's file (never from the network)."""
    for name in names:
        target = str(extension_file(name)).replace("'", "''")
        con.execute(f"LOAD '{target}'")
