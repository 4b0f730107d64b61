"""Maintenance: keeping the warehouse's storage healthy (DuckLake's small files and snapshots)."""
