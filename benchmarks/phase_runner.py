"""What the benchmark scripts share: each timed phase runs in a fresh process of the same
script (``--phase NAME`` plus the script's own options), prints one JSON line as its last
output, and reports its own peak memory; an S3-protocol server (moto) in its own process."""

from __future__ import annotations

import json
import resource
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
import subprocess
import sys
from pathlib import Path


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident memory of this process (or of the running process ``pid``). VmHWM (Linux)
    belongs to the process image; ru_maxrss is inherited across exec from the parent, which may
    have generated the data. None for another process whose /proc entry cannot be read."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid is not None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


MOTO_START_TIMEOUT_S = 30.0


def start_moto(port: int) -> subprocess.Popen:
    """moto's standalone S3 server (``moto[server]``) in its own process on 127.0.0.1:``port``,
    answering when this returns. It is this interpreter running ``moto.server``, so the process's
    own memory can be read (``peak_rss_mb(proc.pid)``). The caller terminates it."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while time.monotonic() < deadline:  # bounded wait until it answers
        if proc.poll() is not None:
            break
        try:
            httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    raise RuntimeError(f"moto server did not start on 127.0.0.1:{port}")


def run_phase(script: str, name: str, *options: str) -> dict:
    """Run ``script --phase name *options`` in a new process and return its JSON result."""
    out = subprocess.run([sys.executable, script, "--phase", name, *options],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def best_of(runs: list[dict]) -> dict:
    """The fastest of repeated runs of one phase."""
    return min(runs, key=lambda r: r["seconds"])


def closed_loop(requests: int, clients: int,
                open_client: Callable[[int], AbstractContextManager[Callable[[int], None]]]) -> tuple[float, list[float]]:
    """``requests`` requests from ``clients`` threads, each taking the next index as soon as its last
    request returned. ``open_client(c)`` gives client ``c``'s ``send(i)`` (in a context that closes its
    connection). Returns the wall seconds and every request's latency in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    indices = iter(range(requests))

    def worker(c: int) -> None:
        with open_client(c) as send:
            while True:
                with lock:
                    i = next(indices, None)
                if i is None:
                    return
                started = time.perf_counter()
                send(i)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies


@contextmanager
def sendgrid_poster(port: int, bodies: list[bytes], timeout_s: float = 30):
    """One client's ``send(i)``: POST ``bodies[i]`` to a local service's /webhooks/sendgrid (one
    keep-alive connection); anything but 200 raises."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s,
                      headers={"Content-Type": "application/json"}) as http:
        def send(i: int) -> None:
            response = http.post("/webhooks/sendgrid", content=bodies[i])
            if response.status_code != 200:
                raise RuntimeError(f"request {i}: {response.status_code} {response.text}")
        yield send
