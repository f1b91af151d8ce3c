"""Per-key consumption shared by every gateway through etcd, so a key's limits hold for the sum
of all gateways instead of per process (issue 18; used by quotas.py for `rpm`, `tpm` and
`max_concurrent`).

Each gateway counts its own requests and tokens per key in fixed UTC minutes, and its requests
in flight per key, and, every
`period` seconds (≤ 1 s), writes one aggregated record per key that changed to
`/nexus/quota/<key_id>/<gateway_id>` under its own lease (never a write per request). It then
reads the whole prefix and admits against the global sum: its own live counts plus the others'
last records. A gateway that dies stops refreshing its lease: its records expire with it
(TTL `ttl`). When etcd cannot be reached, each gateway admits against `limit ÷ gateways it last
saw` with its own counts only, and publishes everything again once etcd answers (resync).

Usage in a minute is a sliding estimate: `current + previous × (1 − elapsed fraction)`, so a
burst across a minute boundary cannot double the limit.

Overshoot bound: a gateway does not see the others' admissions of the last `period` (+ one
read), so with G gateways each admitting at most A tokens (or requests) per second for a key, the
global usage can pass the limit by at most `(G − 1) × A × period`, plus (tokens) the reservations
in flight whose settled usage exceeds their estimate. In-flight requests likewise: at most
`(G − 1) × A × period` above `max_concurrent` (A in requests/s), and never more than G ×
`max_concurrent` (each gateway alone holds the limit against its own live count).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
PREFIX = "/nexus/quota/"
MINUTE = 60.0
PRESENCE = "-"  # `/nexus/quota/-/<gateway_id>`: every gateway sharing, under its lease


@dataclass
class Counts:
    """One gateway's use of one key: [previous minute, current minute] of requests and tokens,
    and its requests in flight now (a gauge: not rolled)."""

    minute: int = 0
    requests: list[int] = field(default_factory=lambda: [0, 0])
    tokens: list[int] = field(default_factory=lambda: [0, 0])
    inflight: int = 0

    def roll(self, minute: int) -> None:
        if minute == self.minute:
            return
        keep = minute == self.minute + 1  # the old current minute becomes the previous one
        self.requests = [self.requests[1] if keep else 0, 0]
        self.tokens = [self.tokens[1] if keep else 0, 0]
        self.minute = minute

    def estimate(self, now: float) -> tuple[float, float]:
        """Sliding-minute usage at `now`: (requests, tokens)."""
        minute = int(now // MINUTE)
        weight = 1.0 - (now - minute * MINUTE) / MINUTE
        if minute == self.minute:
            return self.requests[1] + self.requests[0] * weight, self.tokens[1] + self.tokens[0] * weight
        if minute == self.minute + 1:  # our current minute is the previous one now
            return self.requests[1] * weight, self.tokens[1] * weight
        return 0.0, 0.0

    def record(self) -> dict[str, Any]:
        return {"minute": self.minute, "requests": self.requests, "tokens": self.tokens, "inflight": self.inflight}

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Counts:
        return cls(int(doc["minute"]), [int(x) for x in doc["requests"]], [int(x) for x in doc["tokens"]],
                   int(doc.get("inflight", 0)))


def summed(parts: Any, minute: int) -> Counts:
    """Several gateways' counts as one, each rolled to `minute` first."""
    total = Counts(minute)
    for part in parts:
        if part.minute < minute:
            part = Counts(part.minute, part.requests, part.tokens, part.inflight)
            part.roll(minute)  # (roll makes new lists: the record itself is left alone)
        # else the same minute, or a later one (a clock ahead of ours): counted as of ours
        for i in (0, 1):
            total.requests[i] += part.requests[i]
            total.tokens[i] += part.tokens[i]
        total.inflight += part.inflight
    return total


class QuotaShare:
    def __init__(self, gateway_id: str, client_factory: Callable[[], Any] | None = None, period: float = 0.5,
                 ttl: int = 3, clock: Callable[[], float] = time.time) -> None:
        if not 0 < period <= 1:
            raise ValueError("period must be in (0, 1] s")
        self.gateway_id = gateway_id
        self.period, self.ttl, self.clock = period, ttl, clock
        self._factory = client_factory  # None: no etcd, quotas per gateway
        self.own: dict[str, Counts] = {}
        self.others: dict[str, dict[str, Counts]] = {}  # key_id → gateway → counts
        # key_id → the others' counts summed (at each sync): admission reads one Counts per side
        self.others_sum: dict[str, Counts] = {}
        self.gateways_seen = 1
        self.connected = client_factory is None
        self.writes = 0  # etcd puts so far (bounded by keys × periods, not by requests)
        self._dirty: set[str] = set()
        self._client: Any = None
        self._lease: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        return self._factory is not None

    # --- counting and admission ----------------------------------------------------------
    def add(self, key_id: str, requests: int = 0, tokens: int = 0) -> None:
        """Own consumption: +1 request and the reserved tokens at admission; the difference
        between actual and reserved tokens (maybe negative) when the request settles."""
        counts = self._own(key_id, int(self.clock() // MINUTE))
        counts.requests[1] += requests
        counts.tokens[1] += tokens
        self._dirty.add(key_id)

    def _own(self, key_id: str, minute: int) -> Counts:
        counts = self.own.get(key_id)
        if counts is None:
            counts = self.own[key_id] = Counts(minute)
        elif counts.minute != minute:
            counts.roll(minute)
        return counts

    # take_request and take_tokens check and count in one call each: they run for every request
    # of a limited key (bench/gateway's gateway-limited).
    def take_request(self, key_id: str, rpm: int | None, most: int | None) -> tuple[float, str, float | None]:
        """Admit one request: (0, "", requests) and it is counted (+1 request in the minute, +1
        in flight; `requests`: the sliding minute's with it, None without an rpm); else (seconds
        to wait, "requests" or "concurrent": the limit that refused, None)."""
        now = self.clock()
        own = self._own(key_id, int(now // MINUTE))
        requests = None
        if rpm:
            requests = self.used(key_id, now)[0] + 1
            if requests > self.share(rpm):
                return self._wait(requests - self.share(rpm), rpm), "requests", None
        if most and self.inflight(key_id) + 1 > self.share(most):
            return 1.0, "concurrent", None
        own.requests[1] += 1
        own.inflight += 1
        self._dirty.add(key_id)
        return 0.0, "", requests

    def take_tokens(self, key_id: str, tpm: int, reserve: int) -> tuple[float, float]:
        """Reserve `reserve` tokens: (0, the sliding minute's tokens with them) and they are
        counted; else (the seconds to wait, the tokens without them)."""
        now = self.clock()
        own = self._own(key_id, int(now // MINUTE))
        tokens = self.used(key_id, now)[1]
        if tokens + reserve > self.share(tpm):
            return self._wait(tokens + reserve - self.share(tpm), tpm), tokens
        own.tokens[1] += reserve
        self._dirty.add(key_id)
        return 0.0, tokens + reserve

    def enter(self, key_id: str, delta: int = 1) -> None:
        """A request of this key starts (+1) or ends (-1) here."""
        self._own(key_id, int(self.clock() // MINUTE)).inflight += delta
        self._dirty.add(key_id)

    def inflight(self, key_id: str) -> int:
        """Requests of this key in flight: ours now plus the others' last published."""
        counts = self.own.get(key_id)
        n = counts.inflight if counts is not None else 0
        if self.connected:
            others = self.others_sum.get(key_id)
            if others is not None:
                n += others.inflight
        return n

    def used(self, key_id: str, now: float | None = None) -> tuple[float, float]:
        """Global sliding-minute (requests, tokens); own only while etcd is unreachable."""
        now = self.clock() if now is None else now
        own = self.own.get(key_id)
        requests, tokens = own.estimate(now) if own is not None else (0.0, 0.0)
        if self.connected:
            others = self.others_sum.get(key_id)
            if others is not None:
                more = others.estimate(now)
                requests, tokens = requests + more[0], tokens + more[1]
        return requests, tokens

    def share(self, limit: int) -> float:
        """The part of `limit` this gateway admits against: all of it while it sees the global
        sum, `limit ÷ gateways last seen` while etcd is unreachable."""
        return float(limit) if self.connected else limit / max(1, self.gateways_seen)

    def _wait(self, excess: float, limit: int) -> float:
        """The previous minute's weight decays at limit/60 per second at most: a lower bound,
        capped at the rest of the minute plus one (the previous minute is then gone)."""
        rest = MINUTE - self.clock() % MINUTE
        return max(1.0, min(excess * MINUTE / limit, rest + MINUTE))

    # --- etcd ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._factory is not None and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self, revoke: bool = True) -> None:
        """`revoke=False` leaves the lease to run out (what a killed gateway does)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._client is not None:
            if revoke and self._lease is not None:
                try:
                    await asyncio.wait_for(self._lease.revoke(), 2)
                except Exception:  # noqa: BLE001 - the lease runs out anyway
                    pass
            await _close(self._client)
            self._client = self._lease = None

    async def sync(self) -> None:
        """One period: publish what changed (all after a reconnect), read everyone's records."""
        if self._client is None:
            self._client = self._factory()  # type: ignore[misc]
            await self._client.connect()
        if self._lease is None:
            self._lease = await self._client.lease(self.ttl)
            # Presence, so the others count us before we serve a limited key (key ids are hex).
            await self._client.put(f"{PREFIX}{PRESENCE}/{self.gateway_id}".encode(), b"{}", lease=self._lease)
            self._dirty = set(self.own)  # resync: the old lease took our records with it
        now_minute = int(self.clock() // MINUTE)
        for key_id in sorted(self._dirty):
            counts = self.own[key_id]
            counts.roll(now_minute)
            await self._client.put(f"{PREFIX}{key_id}/{self.gateway_id}".encode(),
                                   json.dumps(counts.record()).encode(), lease=self._lease)
            self.writes += 1
        self._dirty.clear()
        others: dict[str, dict[str, Counts]] = {}
        gateways = {self.gateway_id}
        for kv in await self._client.get_prefix(PREFIX.encode()):
            key_id, _, gateway = kv.key.decode()[len(PREFIX):].rpartition("/")
            value = kv.value
            gateways.add(gateway)
            if gateway != self.gateway_id and key_id != PRESENCE:
                others.setdefault(key_id, {})[gateway] = Counts.parse(json.loads(value))
        self.others, self.gateways_seen, self.connected = others, len(gateways), True
        self.others_sum = {key_id: summed(counts.values(), now_minute) for key_id, counts in others.items()}

    async def _run(self) -> None:
        refreshed = 0.0
        while True:
            try:
                await self.sync()
                if time.monotonic() - refreshed > self.ttl / 3:
                    reply = await self._lease.refresh()
                    if reply is None or reply.TTL <= 0:
                        raise LookupError("quota lease expired")
                    refreshed = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd away: admit against our share, retry
                if self.connected and self._factory is not None:
                    log.warning("quota sync with etcd failed (%s): admitting against limit / %d gateways",
                                exc, self.gateways_seen)
                self.connected = False
                if self._client is not None:
                    await _close(self._client)
                self._client = self._lease = None
                refreshed = 0.0
            await asyncio.sleep(self.period)


async def _close(client: Any) -> None:
    from nexusd.runtime.etcd import close_quietly

    await close_quietly(client)
