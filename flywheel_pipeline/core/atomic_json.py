"""Strict JSON files replaced atomically: write a temporary file, fsync, rename, fsync the
directory, so a reader never sees half a file. Readable by the owner only."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from flywheel_pipeline.core.landing import fsync_dir


def _finite(value: Any) -> Any:
    """Strict JSON: a NaN or infinite float (an undefined rate or lift) is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(value: Any, path: Path) -> Path:
    """Write ``value`` as strict JSON (non-finite numbers as null), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_finite(value), fh, indent=2, sort_keys=True, default=str, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
