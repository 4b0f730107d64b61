"""A service replica's local spool for an object-storage (``s3://``) landing zone.

What acknowledgement means there: a request is answered 2xx only after its lines are written
*and fsynced* in the replica's spool (``<FLYWHEEL_SPOOL>/<replica id>/<source>/``, the landing
writer of service/landing_writer.py with an fsync per append), and only while the landing zone
takes uploads: once an upload or a probe fails, every request that would land events is answered
503 ``landing_unavailable`` with ``Retry-After`` until an upload succeeds again. Sealed segments
(rotated at ``FLYWHEEL_SEGMENT_MAX_BYTES`` / ``FLYWHEEL_SEGMENT_MAX_AGE_S``) are uploaded by a
background thread, each as ``<prefix><source>/<source>-<start ns>-<replica id>.jsonl`` (unique
per replica, ordered within it), and deleted from the spool after S3 confirmed the PUT.

After a crash (``kill -9``, OOM, power loss) nothing acknowledged is lost as long as the spool
disk survives: on start a replica takes every spool directory whose owner is gone (each live
replica holds an ``flock`` on its directory's ``.lock``; the kernel drops it with the process),
seals its open segments (dropping a torn, never acknowledged last line), moves the sealed
segments into its own spool and uploads everything before it acknowledges anything new. What is
*not* covered: losing the spool disk itself before its segments are uploaded (at most the last
``FLYWHEEL_SEGMENT_MAX_AGE_S`` plus one upload of acknowledged events, or more while S3 was
unreachable and had just started failing): put the spool on a persistent volume (a
StatefulSet's volume claim, not an ``emptyDir``).

The replica id is ``FLYWHEEL_REPLICA_ID`` or ``<hostname>-<pid>-<start time>``; two live
processes with one configured id on one spool are refused at start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

from flywheel_pipeline.core.landing import LABEL_SOURCES, SOURCES, fsync_dir
from flywheel_pipeline.landing_store import LandingStore, LandingUnavailable, open_store
from flywheel_pipeline.service.landing_writer import recover

log = logging.getLogger("flywheel.service.spool")

LOCK_NAME = ".lock"
# the uploader: how often it looks for work when idle, and probes the store while it is
# unavailable or quiet (so an outage is noticed within seconds even without traffic)
IDLE_WAIT_S = 0.5
PROBE_INTERVAL_S = 2.0


class SpoolInUse(RuntimeError):
    """Another live process holds this replica's spool (two replicas with one FLYWHEEL_REPLICA_ID)."""


def replica_id(configured: str | None = None) -> str:
    """A name unique among the landing zone's writers, safe in object names."""
    raw = configured or f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._-")
    if not clean:
        raise ValueError(f"FLYWHEEL_REPLICA_ID={configured!r} has no letters or digits")
    return clean[:100]


def worker_replicas(configured: str | None, workers: int) -> list[str]:
    """The replica ids a process may take: the configured id (one process), or one of
    ``<id>-w0`` ... ``<id>-w<N-1>`` for ``flywheel serve --workers N`` (each worker its own spool);
    without a configured id, the default one, unique per process."""
    if configured is None:
        return [replica_id(None)]
    base = replica_id(configured)
    return [base] if workers <= 1 else [f"{base}-w{k}" for k in range(workers)]


def open_spool(settings) -> Spool:
    """This process's spool, opened (see :meth:`Spool.open`): the first of its replica ids
    (``worker_replicas``) no live process holds; SpoolInUse when every one is held."""
    store = open_store(settings.landing)
    names = worker_replicas(settings.replica_id, settings.workers)
    for name in names:
        spool = Spool(settings.spool, store, name)
        try:
            recovered = spool.open()
            break
        except SpoolInUse:
            if name == names[-1]:
                raise  # otherwise a sibling worker's: try the next
    for path in recovered:
        log.warning("recovered spooled segment left by a previous process: %s", path.name)
    return spool


def _try_lock(directory: Path) -> int | None:
    """An exclusive flock on the directory's lock file (its fd), or None when a live process has it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def held(root: Path, replica: str) -> bool:
    """Whether a live process holds the replica's spool (said at start, before the app starts)."""
    directory = Path(root) / replica
    if not (directory / LOCK_NAME).exists():
        return False
    fd = _try_lock(directory)
    if fd is None:
        return True
    os.close(fd)
    return False


def _sealed(directory: Path) -> list[tuple[str, Path]]:
    """(source, path) of the sealed segments in a spool directory, oldest first."""
    out = []
    for source in SOURCES + LABEL_SOURCES:
        sub = directory / source
        if sub.is_dir():
            out += [(source, p) for p in sub.iterdir() if p.name.endswith(".jsonl") and not p.name.startswith(".")]
    return sorted(out, key=lambda sp: sp[1].name)


class Spool:
    """The replica's spool directory, its lock, and the uploader thread."""

    def __init__(self, root: Path, store: LandingStore, replica: str):
        self.root, self.store, self.replica = Path(root), store, replica
        self.directory = self.root / replica
        self.available = False  # acknowledge only while the store takes uploads
        self.last_error: str | None = None
        self.uploaded = 0
        self._lock_fd: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._upload_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_ok = 0.0

    def open(self) -> list[Path]:
        """Lock this replica's directory, take over the directories of dead replicas (seal, move
        in), and upload what the spool holds (a failure leaves the spool unavailable; the
        uploader keeps trying). Returns the segments recovered from dead processes."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._lock_fd = _try_lock(self.directory)
        if self._lock_fd is None:
            raise SpoolInUse(f"spool {self.directory} is held by another live process: give each replica "
                             "its own FLYWHEEL_REPLICA_ID")
        recovered = recover(self.directory)  # this replica's own segments a previous process left open
        for other in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.directory):
            fd = _try_lock(other)
            if fd is None:
                continue  # a live replica's
            try:
                recovered += recover(other)
                for source, path in _sealed(other):
                    target = self.directory / source
                    target.mkdir(mode=0o700, exist_ok=True)
                    os.rename(path, target / path.name)  # one file system: atomic, names kept
                    fsync_dir(target)
                    fsync_dir(path.parent)
                    recovered.append(target / path.name)
                shutil.rmtree(other)
            finally:
                os.close(fd)
        self.upload_pending()
        return recovered

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flywheel-spool-uploader", daemon=True)
        self._thread.start()

    def wake(self, _sealed: Path | None = None) -> None:
        """A segment was sealed (the landing writer's ``on_seal``): upload it soon."""
        self._wake.set()

    def pending(self) -> int:
        return len(_sealed(self.directory))

    def upload_pending(self) -> bool:
        """Upload every sealed segment, oldest first, deleting each once stored; True when the
        spool holds nothing sealed any more. Sets ``available``."""
        with self._upload_lock:
            try:
                for source, path in _sealed(self.directory):
                    self.store.put_file(source, path.name, path)
                    path.unlink()
                    fsync_dir(path.parent)
                    self.uploaded += 1
                if time.monotonic() - self._last_ok >= PROBE_INTERVAL_S:
                    self.store.check()
            except (LandingUnavailable, OSError) as exc:
                if self.available or self.last_error != str(exc):
                    log.error("landing zone unavailable, answering 503 until it is back: %s", exc)
                self.available, self.last_error = False, str(exc)
                return False
            if not self.available:
                log.info("landing zone %s reachable: accepting events", self.store.url)
            self.available, self.last_error, self._last_ok = True, None, time.monotonic()
            return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.pending() or not self.available or time.monotonic() - self._last_ok >= PROBE_INTERVAL_S:
                self.upload_pending()

    def close(self) -> bool:
        """Stop the uploader, upload what is sealed (one try) and release the lock; False when
        something stays in the spool (the next start, or another replica, uploads it)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        done = self.upload_pending()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return done
