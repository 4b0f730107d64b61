"""Landing storage: where the landing zone's sealed files live, a local directory or S3.

``FLYWHEEL_LANDING`` (paths.landing_location) is a directory (default ``$FLYWHEEL_HOME/landing``)
or ``s3://bucket/prefix/``; :func:`open_store` gives the matching store. Both keep the landing
contract of core/landing.py: ``<source>/<name>.jsonl`` objects that are complete when visible and
never change. A store lists one source's sealed files in name order, gives a chunk of them as local
paths DuckDB reads, and writes one whole file under a new name (never replacing one).

S3 is reached with boto3 and the standard settings: ``AWS_ENDPOINT_URL`` (any S3-compatible store:
MinIO, Ceph, moto; path-style addressing when it is set), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (else ``AWS_DEFAULT_REGION``, else us-east-1); an
unreachable store or bucket raises :class:`LandingUnavailable` with one line naming the bucket and
endpoint (never a credential). A PUT is atomic, so listing shows only whole objects; writes use a
conditional PUT (``If-None-Match: *``), so an object is never replaced: re-sending the same bytes
after a crash is recognised by its MD5 (ETag) and is no error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from flywheel_pipeline.core import landing as landing_zone
from flywheel_pipeline.core.landing import LandingFile

S3_SCHEME = "s3://"
# a store that does not answer fails within seconds, not minutes (one retry)
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
MAX_ATTEMPTS = 2


class LandingUnavailable(RuntimeError):
    """The landing zone cannot be reached (one line, safe to print: it names no credential)."""


class LandingStore:
    """What ingestion, the landing sensor and the service's uploader need of a landing zone."""

    url: str  # the zone's identity: an absolute directory or s3://bucket/prefix/

    def list_files(self, source: str) -> list[LandingFile]:
        """Sealed files of one source, in name order (objects being written are never listed)."""
        raise NotImplementedError

    @contextmanager
    def local_paths(self, files: list[LandingFile]) -> Iterator[list[str]]:
        """The files as local paths whose base names are the files' names (DuckDB reads them)."""
        raise NotImplementedError
        yield []  # pragma: no cover

    def put_file(self, source: str, name: str, path: Path) -> None:
        """Store the local file ``path`` as ``<source>/<name>``; an existing different file is an error."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise LandingUnavailable when the zone cannot be listed."""

    def __str__(self) -> str:
        return self.url


class DirectoryStore(LandingStore):
    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def list_files(self, source: str) -> list[LandingFile]:
        return landing_zone.list_files(self.root, source)

    @contextmanager
    def local_paths(self, files: list[LandingFile]) -> Iterator[list[str]]:
        yield [str(f.path) for f in files]

    def put_file(self, source: str, name: str, path: Path) -> None:
        directory = landing_zone.source_dir(self.root, source)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = directory / name
        if final.exists():
            if _md5(final) == _md5(path):
                return
            raise FileExistsError(f"landing files are immutable and {final} already exists")
        tmp = directory / f".{name}.tmp"
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.rename(tmp, final)
        landing_zone.fsync_dir(directory)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise LandingUnavailable(f"landing zone {self.root} is not a directory")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, 'prefix/'); the prefix is '' or ends in '/'."""
    if not url.startswith(S3_SCHEME):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len(S3_SCHEME):].partition("/")
    if not bucket or "/" in bucket:
        raise ValueError(f"FLYWHEEL_LANDING={url!r} names no bucket: use s3://bucket/prefix/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client(env: Mapping[str, str] | None = None):
    """A boto3 S3 client from the standard AWS_* settings, with short timeouts."""
    import boto3
    from botocore.config import Config

    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    s3={"addressing_style": "path"} if endpoint else None)
    # credentials: boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, then profiles,
    # instance roles), never passed through our code or printed
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


class S3Store(LandingStore):
    def __init__(self, url: str, env: Mapping[str, str] | None = None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"{S3_SCHEME}{self.bucket}/{self.prefix}"
        env = os.environ if env is None else env
        self.endpoint = env.get("AWS_ENDPOINT_URL") or "AWS"
        self.client = s3_client(env)

    def _unavailable(self, exc: Exception) -> LandingUnavailable:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            reason = f"{error.get('Code', 'error')} ({exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode')})"
        else:
            reason = type(exc).__name__
        return LandingUnavailable(f"landing zone {self.url} at {self.endpoint} is unreachable: {reason}")

    def _call(self, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(exc) from None

    def list_files(self, source: str) -> list[LandingFile]:
        landing_zone.source_dir(Path("."), source)  # validates the source
        prefix = f"{self.prefix}{source}/"
        files = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call(self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix):]
                if "/" not in name and name.endswith(".jsonl") and not name.startswith("."):
                    files.append(LandingFile(source, None, int(item["Size"]), key=item["Key"]))
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        files.sort(key=lambda f: f.name)
        return files

    @contextmanager
    def local_paths(self, files: list[LandingFile]) -> Iterator[list[str]]:
        """Download the chunk into a private temporary directory (removed afterwards)."""
        with tempfile.TemporaryDirectory(prefix="flywheel-landing-") as tmp:
            out = []
            for f in files:
                target = Path(tmp) / f.name
                self._call(self.client.download_file, Bucket=self.bucket, Key=f.key, Filename=str(target))
                out.append(str(target))
            yield out

    def key(self, source: str, name: str) -> str:
        return f"{self.prefix}{source}/{name}"

    def put_file(self, source: str, name: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key(source, name)
        md5 = _md5(path)
        try:
            with open(path, "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise self._unavailable(exc) from None
            # already there: the same bytes (an upload whose acknowledgement a crash lost) are fine
            head = self._call(self.client.head_object, Bucket=self.bucket, Key=key)
            # the ETag is the MD5 of a single-part object, except with SSE-KMS: then compare the bytes
            if head.get("ETag", "").strip('"') != md5 and self._read(key) != path.read_bytes():
                raise FileExistsError(f"landing object {self.url}{source}/{name} exists with other content") from None
        except BotoCoreError as exc:
            raise self._unavailable(exc) from None

    def _read(self, key: str) -> bytes:
        return self._call(self.client.get_object, Bucket=self.bucket, Key=key)["Body"].read()

    def check(self) -> None:
        self._call(self.client.list_objects_v2, Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)


def land_records(store: LandingStore, source: str, records, name: str | None = None) -> str:
    """Write records as one new landing file of ``source`` (core/landing.write_jsonl's rules) in
    the store; returns where it landed."""
    if isinstance(store, DirectoryStore):
        return str(landing_zone.write_jsonl(store.root, source, records, name=name))
    with tempfile.TemporaryDirectory(prefix="flywheel-land-") as tmp:
        path = landing_zone.write_jsonl(Path(tmp), source, records, name=name)
        store.put_file(source, path.name, path)
        return f"{store.url}{source}/{path.name}"


def upload_directory(directory: Path, store: LandingStore) -> int:
    """Put every landing file of a local directory that the store lacks (a staged landing zone,
    e.g. the simulator's, into object storage); returns how many were put."""
    put = 0
    for source in landing_zone.SOURCES + landing_zone.LABEL_SOURCES:
        present = {f.name for f in store.list_files(source)}
        for f in landing_zone.list_files(directory, source):
            if f.name not in present:
                store.put_file(source, f.name, f.path)
                put += 1
    return put


def open_store(location: str | Path | LandingStore, env: Mapping[str, str] | None = None) -> LandingStore:
    """The store of a landing location: an ``s3://`` URL or a directory (a store is returned as is)."""
    if isinstance(location, LandingStore):
        return location
    text = str(location)
    return S3Store(text, env) if text.startswith(S3_SCHEME) else DirectoryStore(text)
