"""An S3-protocol server on 127.0.0.1 for tests: moto's standalone server (``moto[server]``) in a
thread on a free port, a bucket in it, and the standard ``AWS_*`` settings that point at it.

``stop()`` makes the store unreachable (connections refused) and ``start()`` brings it back on
the same port with the objects it held (moto keeps them in this process), so tests can take S3
away mid-stream. Use the ``s3_landing`` fixture (import it into the test module)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from flywheel_pipeline_tests.fakes.http import free_port

BUCKET = "flywheel-landing"
START_TIMEOUT_S = 10.0


@dataclass
class S3Landing:
    port: int
    bucket: str = BUCKET
    prefix: str = "zone/"
    server: ThreadedMotoServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # bounded wait until it answers
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
                            config=Config(s3={"addressing_style": "path"}))

    def objects(self, source: str) -> dict[str, bytes]:
        """name -> content of every object of one source."""
        c = self.client()
        prefix = f"{self.prefix}{source}/"
        keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
                for o in page.get("Contents", [])]
        return {k[len(prefix):]: c.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in sorted(keys)}


@pytest.fixture
def s3_landing(monkeypatch) -> Iterator[S3Landing]:
    """moto on 127.0.0.1:<free port> with an empty bucket; AWS_* (test credentials, endpoint,
    region) and FLYWHEEL_LANDING=s3://bucket/zone/ set for the test and the processes it starts."""
    landing = S3Landing(free_port())
    landing.env = {"AWS_ENDPOINT_URL": landing.endpoint, "AWS_ACCESS_KEY_ID": "test-access-key",
                   "AWS_SECRET_ACCESS_KEY": "test-secret-key-never-printed", "AWS_REGION": "us-east-1",
                   "FLYWHEEL_LANDING": landing.url}
    for name, value in landing.env.items():
        monkeypatch.setenv(name, value)
    landing.start()
    landing.client().create_bucket(Bucket=landing.bucket)
    try:
        yield landing
    finally:
        landing.stop()
        # moto keeps its objects in this process: the next test starts with a fresh backend
        from moto.backends import get_backend

        get_backend("s3").reset()
