"""Durable, append-only writing into the landing zone for the ingestion service.

Each source has one open segment, a hidden file ``.<source>-<start ns>-<id>.jsonl.open`` in
``landing/<source>/``. :meth:`SegmentWriter.append` writes a request's lines in one ``write``
call (repeated only after a short write) and returns only after the kernel has them, so an acknowledged
event survives the process being killed (``kill -9``): the page cache belongs to the kernel.
``fsync`` runs on rotation, on an append once ``fsync_interval_s`` has passed since the last,
and from :meth:`SegmentWriter.maintain` (the service's one-second timer), so an acknowledged
line is on stable storage within about ``fsync_interval_s`` even when traffic stops
(power-loss durability at bounded cost). A segment is rotated (fsync, then an atomic rename to
a visible ``<source>-<start ns>-<id>.jsonl``, so names sort in write order) when it reaches
``max_bytes`` or ``max_age_s``; readers only ever see complete, immutable files. On start,
:func:`recover` finishes segments a dead process left open: it drops a torn last line (never
acknowledged: the writer acknowledges only after the full line with its newline is written),
fsyncs and renames them. Complete lines of a request cut off mid-write stay; the sender was
never acknowledged and retries, and ingestion drops the duplicates.
Order is preserved within a source; nothing is deduplicated (ingestion does that).

With an ``s3://`` landing zone the same writer writes a replica's local spool instead
(service/spool.py): segment names carry the replica id (``tag``), every append is fsynced
before it returns (``sync_each_append``: a group commit, one fsync covering every request
written before it, so concurrent requests share fsyncs), and each sealed segment is handed to
``on_seal``, which uploads it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flywheel_pipeline.core.landing import fsync_dir

OPEN_SUFFIX = ".jsonl.open"
STAGING_SUFFIX = ".new"  # a segment being created: locked, then renamed to its .open name
CREATE_ATTEMPTS = 5


def _seal(open_path: Path) -> Path | None:
    """fsync an open segment, drop a torn last line, rename it visible; None if empty."""
    with open(open_path, "rb+") as fh:
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    if keep == 0:
        open_path.unlink()
        return None
    final = open_path.with_name(open_path.name[1:-len(".open")])
    os.rename(open_path, final)
    fsync_dir(open_path.parent)
    return final


def _remove_if_unlocked(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # its writer is alive and about to rename it
    finally:
        os.close(fd)


def recover(landing: Path) -> list[Path]:
    """Seal every segment under ``landing`` left open by a process that is gone (call before
    accepting traffic). A live writer holds an ``flock`` on each of its open segments (the kernel
    drops it with the process), so the segments of other live processes writing the same landing
    zone (``flywheel serve --workers N``) are left alone."""
    sealed = []
    for staging in landing.glob(f"*/.*{OPEN_SUFFIX}{STAGING_SUFFIX}"):
        _remove_if_unlocked(staging)  # a process died between creating a segment and naming it: empty
    for path in sorted(landing.glob(f"*/.*{OPEN_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # sealed meanwhile by its live writer
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's
            if not path.exists():
                continue  # sealed between the listing and the lock
            final = _seal(path)
        finally:
            os.close(fd)  # drops the lock
        if final is not None:
            sealed.append(final)
    return sealed


@dataclass
class _Segment:
    path: Path
    fd: int
    opened: float
    size: int = 0
    last_fsync: float = 0.0
    dirty: bool = False
    synced: int = 0  # bytes known to be on stable storage (sync_each_append)
    closed: bool = False
    sync_lock: threading.Lock = field(default_factory=threading.Lock)  # the fd is not closed while held


class SegmentWriter:
    def __init__(self, landing: Path, *, max_bytes: int = 8 << 20, max_age_s: float = 60.0,
                 fsync_interval_s: float = 1.0, tag: str | None = None,
                 on_seal: Callable[[Path], None] | None = None, sync_each_append: bool = False):
        """``tag`` names the writer in its segments' names (default: a random id per segment);
        ``on_seal`` is called with each sealed segment's path; ``sync_each_append``: an append
        returns only once its lines are fsynced."""
        self.landing = Path(landing)
        self.max_bytes, self.max_age_s, self.fsync_interval_s = max_bytes, max_age_s, fsync_interval_s
        self.tag, self.on_seal, self.sync_each_append = tag, on_seal, sync_each_append
        self._segments: dict[str, _Segment] = {}
        self._lock = threading.Lock()
        self._last_ns = 0
        self.bytes_written = 0

    def _open(self, source: str) -> _Segment:
        directory = self.landing / source
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(CREATE_ATTEMPTS):
            created = self._create_locked(directory, source)
            if created is not None:
                break
        else:
            raise OSError(f"could not create a landing segment in {directory}: another process's recovery "
                          f"removed it {CREATE_ATTEMPTS} times")
        fsync_dir(directory)  # the open segment's name survives a crash
        now = time.monotonic()
        return _Segment(created[0], created[1], now, 0, now)

    def _create_locked(self, directory: Path, source: str) -> tuple[Path, int] | None:
        """A new segment, locked, under its .open name: created under a staging name recover()
        only cleans up, locked, then renamed, so another process's recover() never finds it
        unlocked under its .open name. None when a starting process's recover() took the empty
        staging file in the instant before it was locked (and removes it)."""
        # names sort in creation order (nanosecond clock, strictly increasing per writer), so
        # readers that list files by name see segments in the order they were written
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        path = directory / f".{source}-{self._last_ns:020d}-{self.tag or uuid.uuid4().hex[:8]}{OPEN_SUFFIX}"
        staging = path.with_name(path.name + STAGING_SUFFIX)
        # personal data: the owner's only
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while open: recover() leaves it alone
            os.rename(staging, path)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        return path, fd

    def append(self, source: str, lines: list[bytes]) -> int:
        """Write complete lines (each without its newline) for one request, in order; returns
        the bytes written. Returns only after the kernel holds every line (with
        ``sync_each_append``: after they are on stable storage)."""
        payload = b"".join(line + b"\n" for line in lines)
        if not payload:
            return 0
        with self._lock:
            segment = self._segments.get(source)
            if segment is None:
                segment = self._segments[source] = self._open(source)
            view = memoryview(payload)
            while view:
                written = os.write(segment.fd, view)
                view = view[written:]
            segment.size += len(payload)
            segment.dirty = True
            self.bytes_written += len(payload)
            now = time.monotonic()
            if now - segment.last_fsync >= self.fsync_interval_s:
                self._fsync(segment, now)
            end = segment.size
            if segment.size >= self.max_bytes or now - segment.opened >= self.max_age_s:
                self._rotate(source)  # fsyncs everything written
        if self.sync_each_append:
            self._sync_to(segment, end)
        return len(payload)

    @staticmethod
    def _sync_to(segment: _Segment, end: int) -> None:
        """Group commit: make the segment's first ``end`` bytes durable. One fsync covers every
        append written before it started, so a request that waited for another's fsync usually
        finds its own lines already covered."""
        with segment.sync_lock:
            if segment.closed or segment.synced >= end:
                return
            size = segment.size  # appends are complete before size grows: all of it is written
            os.fsync(segment.fd)
            segment.synced = size

    @staticmethod
    def _fsync(segment: _Segment, now: float) -> None:
        os.fsync(segment.fd)
        segment.last_fsync, segment.dirty = now, False

    def _rotate(self, source: str) -> Path | None:
        segment = self._segments.pop(source, None)
        if segment is None:
            return None
        with segment.sync_lock:
            os.fsync(segment.fd)
            sealed = _seal(segment.path)  # renamed while its lock is held, so recover() never races it
            os.close(segment.fd)
            segment.closed = True
        if sealed is not None and self.on_seal is not None:
            self.on_seal(sealed)
        return sealed

    def rotate_due(self) -> list[Path]:
        """Seal segments older than max_age_s (call periodically, e.g. from a timer)."""
        with self._lock:
            now = time.monotonic()
            due = [s for s, seg in self._segments.items() if now - seg.opened >= self.max_age_s]
            return [p for p in (self._rotate(s) for s in due) if p is not None]

    def maintain(self) -> list[Path]:
        """The service's once-a-second timer: fsync segments written to since their last fsync
        (so a quiet segment is on stable storage within ``fsync_interval_s``, not only at
        rotation) and seal the ones that are due."""
        with self._lock:
            now = time.monotonic()
            for segment in self._segments.values():
                if segment.dirty and now - segment.last_fsync >= self.fsync_interval_s:
                    self._fsync(segment, now)
        return self.rotate_due()

    def open_segments(self) -> dict[str, int]:
        """Bytes in each source's open segment."""
        with self._lock:
            return {source: seg.size for source, seg in self._segments.items()}

    def close(self) -> list[Path]:
        with self._lock:
            return [p for p in (self._rotate(s) for s in list(self._segments)) if p is not None]
