"""Files the pipeline publishes for other processes (the ingestion service, the outreach app):
``$FLYWHEEL_HOME/routing.json`` and ``$FLYWHEEL_HOME/leaderboard.json``, each replaced
atomically (write a temporary file, fsync, rename, fsync the directory) so a reader never sees half a file."""

from __future__ import annotations

from pathlib import Path

from flywheel_pipeline import paths
from flywheel_pipeline.core.atomic_json import write_json_atomic  # noqa: F401 - re-exported


def leaderboard_path() -> Path:
    return paths.leaderboard_path()
