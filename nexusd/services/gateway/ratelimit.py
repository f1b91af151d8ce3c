"""Per-key requests-per-minute limit: a token bucket per key id (capacity = rpm, refilled at
rpm/60 per second), so a key may burst up to its minute's allowance and no further."""

from __future__ import annotations

import math


class RateLimiter:
    def __init__(self) -> None:
        # key id -> (tokens, last refill time, rpm the bucket was made for)
        self._buckets: dict[str, list[float]] = {}

    def take(self, key_id: str, rpm: int, now: float) -> float:
        """0 when the request may pass; else the seconds until it could (for Retry-After)."""
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket[2] != rpm:  # new key, or its limit changed on reload
            bucket = self._buckets[key_id] = [float(rpm), now, float(rpm)]
        tokens = min(float(rpm), bucket[0] + (now - bucket[1]) * rpm / 60.0)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) * 60.0 / rpm

    def forget_except(self, key_ids: set[str]) -> None:
        """Drop the buckets of revoked keys (after a reload)."""
        for key_id in list(self._buckets):
            if key_id not in key_ids:
                del self._buckets[key_id]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
