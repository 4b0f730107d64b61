"""Real HTTP on 127.0.0.1 for tests and benchmarks: an ASGI app in a thread, or `flywheel serve` in a process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(app, *, timeout_s: float = 10.0) -> Iterator[str]:
    """Yields the base URL ``http://127.0.0.1:<port>``; the app's lifespan runs (startup and shutdown)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)


def start_flywheel_serve(home: Path, port: int, *options: str, **env: str) -> subprocess.Popen:
    """`flywheel serve` in a subprocess on 127.0.0.1:port with FLYWHEEL_HOME=home (and ``env``,
    and more command-line ``options``), returned once /healthz answers (RuntimeError with its
    stderr otherwise)."""
    environ = dict(os.environ, FLYWHEEL_HOME=str(home), PYTHONPATH=str(REPO), **env)
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_pipeline.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning", *options],
                            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"flywheel serve did not start: {proc.stderr.read().decode()[-2000:]}")
