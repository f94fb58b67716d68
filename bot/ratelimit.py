"""Per-agent request rate limit: a token bucket per agent, kept in this process.

Each replica enforces the configured rate on its own share of the traffic; a load balancer
spreading one agent over N replicas lets it reach N times the rate at most.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    capacity: int
    per_seconds: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[int, Bucket] = field(default_factory=dict)

    def take(self, key: int) -> float:
        """Spend one request; 0 when allowed, else the seconds until one is available."""
        now = self.clock()
        rate = self.capacity / self.per_seconds
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(tokens=float(self.capacity), updated=now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate

    @staticmethod
    def retry_after_header(wait: float) -> int:
        return max(1, math.ceil(wait))
