"""A light HTTP/1.1 load generator for the benchmark scripts: keep-alive connections on asyncio
streams, requests encoded once beforehand, responses framed by their Content-Length. On these two
cores the client shares the CPU with the server it measures, so it must cost little per request
(httpx's async client cost more per request than the service's /healthz itself).

Open loop: request i is scheduled at t0 + i / rate; each connection takes the next scheduled
request, waits for its time and sends it. Latency counts from the scheduled time, so a server
(or client) that falls behind shows as latency, not as a lower rate. Closed loop: each
connection sends its next request as soon as the last one answered (maximum throughput).
Every request has a timeout; anything but a 200 counts as an error."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlencode


def get_request(path: str, params: dict | None = None, headers: dict | None = None) -> bytes:
    target = f"{path}?{urlencode(params)}" if params else path
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes) -> int:
        """One request, its whole response read; returns the status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def open_loop(port: int, requests: list[bytes], rate: int, duration: float, connections: int = 64,
                    timeout_s: float = 5.0) -> dict:
    total = int(rate * duration)
    latencies: list[float] = []
    service: list[float] = []
    errors = 0
    slots = iter(range(total))
    t0 = time.perf_counter() + 0.2

    async def worker() -> None:
        nonlocal errors
        conn = await Connection.open(port)
        try:
            for i in slots:
                scheduled = t0 + i / rate
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                sent = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(conn.send(requests[i % len(requests)]), timeout_s) == 200
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                    ok = False
                    conn.close()
                    conn = await Connection.open(port)
                done = time.perf_counter()
                errors += not ok
                latencies.append(done - scheduled)
                service.append(done - sent)
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    return {"requests": total, "errors": errors, "throughput": total / elapsed, "latencies": latencies,
            "service": service}


async def closed_loop(port: int, requests: list[bytes], total: int, concurrency: int,
                      timeout_s: float = 5.0) -> dict:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            for i in counter:
                t = time.perf_counter()
                status = await asyncio.wait_for(conn.send(requests[i % len(requests)]), timeout_s)
                assert status == 200, f"request {i}: status {status}"
                latencies.append(time.perf_counter() - t)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"throughput": total / (time.perf_counter() - t0), "latencies": latencies}


def pct(values: list[float], q: float) -> float:
    """The q-quantile of seconds, in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
