"""Request limits (per organization; failed authentications per client): a token bucket per
key (``rate`` requests per minute, bursts up to ``rate``), answering how long to wait when a
request is refused."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    MAX_KEYS = 10_000  # beyond this many keys, buckets that have refilled are forgotten

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int:
        """0 if the request may go ahead, else the whole seconds to wait (for Retry-After)."""
        if self.per_minute <= 0:
            return 0
        with self._lock:
            now = self._clock()
            tokens = self._tokens(key, now)
            if len(self._buckets) >= self.MAX_KEYS:
                self._forget_full(now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self._rate))

    def blocked(self, key: str) -> int:
        """0 if ``key`` could make a request now, else the whole seconds to wait (consumes nothing)."""
        if self.per_minute <= 0:
            return 0
        with self._lock:
            tokens = self._tokens(key, self._clock())
            return 0 if tokens >= 1.0 else max(1, math.ceil((1.0 - tokens) / self._rate))

    def _tokens(self, key: str, now: float) -> float:
        """The key's tokens now: its bucket refilled since it was last touched (a new key starts full)."""
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - last) * self._rate)

    def _forget_full(self, now: float) -> None:
        """A bucket that has refilled holds no state worth keeping (a new one starts full)."""
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self._rate >= self.per_minute:
                del self._buckets[key]
