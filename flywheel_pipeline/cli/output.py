"""How the ``flywheel`` command prints: the story on stdout, problems on stderr, and the
libraries' log output (Dagster's run logs, MLflow's registry messages) in a log file under
``FLYWHEEL_HOME`` unless ``--verbose`` asks for it on the terminal."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from flywheel_pipeline import paths

LOG_FILE_NAME = "flywheel.log"


def say(msg: str = "") -> None:
    """One line of the story, on stdout at once."""
    print(msg, flush=True)


def complain(command: str, msg: str) -> None:
    """One line on stderr, prefixed with the command (``flywheel sql: ...``)."""
    print(f"flywheel {command}: {msg}", file=sys.stderr, flush=True)


def log_file() -> Path:
    """Where the Dagster and MLflow log output of CLI runs goes: ``$FLYWHEEL_HOME/logs/flywheel.log``."""
    return paths.logs_dir() / LOG_FILE_NAME


_streams: dict[Path, IO[str]] = {}


def _log_stream() -> IO[str]:
    # one append-mode stream per log file, open for the process's life: a logging handler created
    # while the libraries' output was redirected may keep writing to it afterwards
    path = log_file()
    if path not in _streams:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _streams[path] = open(path, "a", encoding="utf-8", buffering=1)
    return _streams[path]


@contextlib.contextmanager
def library_output(title: str, *, verbose: bool) -> Iterator[None]:
    """Everything written to stderr inside the block (Dagster's console logger, MLflow's and
    Alembic's loggers, warnings) goes to :func:`log_file`, under a line naming ``title``; with
    ``verbose`` it stays on the terminal. Redirected at the file descriptor, so handlers created
    before the block and child processes follow too; the story (stdout) is untouched."""
    if verbose:
        yield
        return
    stream = _log_stream()
    stream.write(f"\n--- {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC: {title} ---\n")
    stream.flush()
    sys.stderr.flush()
    try:
        saved: int | None = os.dup(2)
        os.dup2(stream.fileno(), 2)
    except OSError:  # no file descriptor 2 (an embedding host): the Python-level redirect below still holds
        saved = None
    try:
        with contextlib.redirect_stderr(stream):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        stream.flush()
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def columns(headers: Sequence[str], rows: Sequence[Sequence[object]], *, left: int = 1,
            indent: str = "") -> list[str]:
    """A table as lines whose columns are as wide as their widest cell: the first ``left``
    columns aligned left, the others right (numbers)."""
    cells = [list(map(str, headers)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [indent + " ".join(c.ljust(w) if i < left else c.rjust(w)
                              for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]


def short_metadata(metadata: dict) -> str:
    """The scalar entries of a check's metadata, and short JSON ones, on one line."""
    parts = []
    for key, entry in metadata.items():
        value = getattr(entry, "value", entry)
        if isinstance(value, (bool, int, float, str)) and len(str(value)) <= 200 and "\n" not in str(value):
            parts.append(f"{key}={value}")
        elif isinstance(value, (dict, list)) and value and len(json.dumps(value)) <= 200:
            parts.append(f"{key}={json.dumps(value)}")
    return ", ".join(parts)
