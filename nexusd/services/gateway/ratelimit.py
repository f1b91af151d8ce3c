"""Rate limits per client address (failed authentications, and the public image-file route);
a key's own limits are quotas (quotas.py). Token buckets (capacity = rate per minute, refilled at
rate/60 per second), so a client may burst up to its minute's allowance and no further."""

from __future__ import annotations

import contextlib
import ipaddress
import math
from collections.abc import Iterator

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    def __init__(self, max_entries: int = 0) -> None:
        # id -> (tokens, last refill time, rpm the bucket was made for)
        self._buckets: dict[str, list[float]] = {}
        # Buckets keyed by client address come from strangers: bound them. A full table is
        # cleared of full buckets (clients that have been quiet), then of everything.
        self.max_entries = max_entries

    def take(self, key_id: str, rpm: int, now: float) -> float:
        """0 when the request may pass; else the seconds until it could (for Retry-After)."""
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket[2] != rpm:  # new key, or its limit changed on reload
            if self.max_entries and bucket is None and len(self._buckets) >= self.max_entries:
                self._prune(now)
            bucket = self._buckets[key_id] = [float(rpm), now, float(rpm)]
        tokens = min(float(rpm), bucket[0] + (now - bucket[1]) * rpm / 60.0)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) * 60.0 / rpm

    def empty(self, key_id: str, now: float) -> float:
        """Like take() for a bucket that only failures fill: the wait, without taking."""
        bucket = self._buckets.get(key_id)
        if bucket is None:
            return 0.0
        rpm = bucket[2]
        tokens = min(rpm, bucket[0] + (now - bucket[1]) * rpm / 60.0)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) * 60.0 / rpm

    def _prune(self, now: float) -> None:
        for key, (tokens, last, rpm) in list(self._buckets.items()):
            if tokens + (now - last) * rpm / 60.0 >= rpm:
                del self._buckets[key]
        if len(self._buckets) >= self.max_entries:
            self._buckets.clear()

    def forget_except(self, key_ids: set[str]) -> None:
        """Drop the buckets of revoked keys (after a reload)."""
        for key_id in list(self._buckets):
            if key_id not in key_ids:
                del self._buckets[key_id]


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def parse_networks(values: list[str]) -> list[Network]:
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def client_address(request: web.Request, trusted: list[Network]) -> str:
    """The client's address: the socket's peer, or, when that peer is a trusted proxy, the
    nearest untrusted address in X-Forwarded-For (walking it from the right, as the proxies
    appended it)."""
    peer = request.remote or ""
    if not trusted or not _is_in(peer, trusted):
        return peer
    forwarded = request.headers.getall("X-Forwarded-For", [])
    hops = [h.strip() for value in forwarded for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_in(hop, trusted):
            return hop if _is_ip(hop) else peer
    return peer


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class FileRouteLimits:
    """The public image-file route (no key): a per-client-address rate limit, and its own
    admission per instance (at most `inflight` fetches at once, beyond that 429), so that
    fetches — real or with a bogus token for a known instance — never take an instance's
    generation slots. A tiny local admission for now; see docs/gateway.md."""

    def __init__(self, *, per_minute: int, inflight: int, trusted: list[Network]) -> None:
        self.per_minute = per_minute
        self.inflight = inflight
        self.trusted = trusted
        self.limiter = RateLimiter(max_entries=65536)
        self.active: dict[str, int] = {}

    def check_rate(self, request: web.Request) -> None:
        import time

        from nexusd.runtime.errors import ApiError

        wait = self.limiter.take(client_address(request, self.trusted), self.per_minute, time.time())
        if wait:
            raise ApiError(429, "Too many file requests from this address", code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after(wait)})

    @contextlib.contextmanager
    def admit(self, instance_id: str) -> Iterator[None]:
        from nexusd.runtime.errors import ApiError

        active = self.active.get(instance_id, 0)
        if active >= self.inflight:
            raise ApiError(429, "Too many file requests in flight for this instance", code="overloaded",
                           headers={"Retry-After": "1"})
        self.active[instance_id] = active + 1
        try:
            yield
        finally:
            left = self.active[instance_id] - 1
            if left:
                self.active[instance_id] = left
            else:
                del self.active[instance_id]
