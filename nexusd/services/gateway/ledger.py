"""The usage ledger: requests and tokens (prompt, completion) per key, per model, per UTC day,
kept for `days` days (NEXUS_GATEWAY_USAGE_DAYS) and read by `nexusd keys usage` and budgets.

Each gateway counts its own use in memory and, every `period` seconds (never per request),
writes one cumulative record per (day, key) that changed, `{model: {requests, prompt_tokens,
completion_tokens}}`, to a store (usagestore.py): etcd `/nexus/usage/<YYYY-MM-DD>/<key_id>/
<gateway_id>` with no lease (usage outlives the gateway), or the gateway's state directory.
The gateway id is stable across restarts: a restarted gateway reads its own records back
before it writes any and adds them to what it counted meanwhile, so a record never shrinks.

In the same pass it reads everyone's records of today, and of the month's earlier days when the
day changes (and every MONTH_REREAD s while budgets are in use: they change only in the minutes
after midnight), for the budgets: spent = the others' last records + its own live counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from nexusd.services.gateway import budget
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.usagestore import (
    EtcdStore,
    FileStore,
    MemoryStore,
    Record,
    Store,
    add_into,
)

log = logging.getLogger(__name__)
MONTH_REREAD = 60.0  # seconds between reads of the month's earlier days while budgets are in use
# (key id, tokens this request holds against a budget), or None once released
RESERVED: web.RequestKey[tuple[str, int] | None] = web.RequestKey("nexus.ledger.reserved", tuple)


def usage_id(settings: Any) -> str:
    """This gateway's id in the ledger: NEXUS_GATEWAY_USAGE_ID, else `<host>-<port>` (and `@N`
    for instance N): the same after a restart, distinct for gateways on one host."""
    if settings.usage_id:
        return str(settings.usage_id)
    host = socket.gethostname().split(".")[0]
    port = settings.port or f"any{secrets.token_hex(4)}"  # port 0 (tests): no stable id to keep
    instance = os.environ.get("NEXUS_INSTANCE", "")
    return f"{host}-{port}" + (f"@{instance}" if instance else "")


def usage_store(settings: Any, shared: Any) -> Store:
    """etcd when configured; else NEXUS_GATEWAY_USAGE_DIR, else systemd's $STATE_DIRECTORY/usage;
    else (run by hand) memory: nothing written where nobody asked."""
    if shared.etcd_endpoint_list:
        from nexusd.runtime.etcd import etcd_client

        return EtcdStore(lambda: etcd_client(shared))
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if settings.usage_dir or state:
        return FileStore(settings.usage_dir or Path(state) / "usage")
    log.warning("usage ledger kept in memory only (no etcd, NEXUS_GATEWAY_USAGE_DIR or $STATE_DIRECTORY)")
    return MemoryStore()


_DAY: list[Any] = [None, ""]  # (day number, its YYYY-MM-DD): formatted once a day, not per request


def day_of(ts: float) -> str:
    number = int(ts // 86400)
    if _DAY[0] != number:
        _DAY[:] = [number, datetime.fromtimestamp(number * 86400, UTC).strftime("%Y-%m-%d")]
    return str(_DAY[1])


def month_of(day: str) -> str:
    return day[:7]  # YYYY-MM


def month_days(month: str) -> tuple[str, str]:
    """First and last day of a YYYY-MM month."""
    first = date.fromisoformat(month + "-01")
    nxt = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    return first.isoformat(), (nxt - timedelta(days=1)).isoformat()


class Ledger:
    def __init__(self, gateway_id: str, store: Store, period: float = 5.0, days: int = 90,
                 clock: Callable[[], float] = time.time) -> None:
        if period <= 0 or days < 1:
            raise ValueError("period must be > 0 and days >= 1")
        self.gateway_id, self.store, self.period, self.days, self.clock = gateway_id, store, period, days, clock
        self.own: dict[str, dict[str, Record]] = {}  # day → key id → {model: [requests, prompt, completion]}
        self.others: dict[str, dict[str, dict[str, Record]]] = {}  # day → key id → gateway → record
        # (key id, first day, last day) → the others' tokens then: they change only at a sync
        self._others_spent: dict[tuple[str, str, str], int] = {}
        self.loaded: set[str] = set()  # days whose stored own record is merged into `own`
        self.dirty: set[tuple[str, str]] = set()  # (day, key id) changed since the last write
        self.inflight: dict[str, int] = {}  # key id → tokens reserved by requests not settled yet
        self.writes = 0  # store writes so far: bounded by keys × periods, not by requests
        self.reads = 0  # store reads done (syncs)
        self._pruned = ""  # the day retention last ran
        self._month_read, self._month_at = "", 0.0  # the month's earlier days: read on which day, when
        self.budgeted = False  # a key with a budget was admitted: the others' use of the month matters
        self._task: asyncio.Task[None] | None = None

    # --- counting (the request path: dict updates only) ------------------------------------
    def record(self, key_id: str, model: str, prompt: int, completion: int, requests: int = 1) -> None:
        day = day_of(self.clock())
        counts = self.own.setdefault(day, {}).setdefault(key_id, {}).setdefault(model, [0, 0, 0])
        counts[0] += requests
        counts[1] += prompt
        counts[2] += completion
        self.dirty.add((day, key_id))

    def spent(self, key_id: str, first: str, last: str) -> int:
        """Tokens `key_id` used from day `first` to `last` (inclusive), over every gateway."""
        total = 0
        for day, keys in self.own.items():
            if first <= day <= last:
                total += sum(c[1] + c[2] for c in keys.get(key_id, {}).values())
        others = self._others_spent.get((key_id, first, last))
        if others is None:  # once per sync, not per request
            others = self._others_spent[(key_id, first, last)] = sum(
                c[1] + c[2] for day, gateways in self.others.items() if first <= day <= last
                for rec in gateways.get(key_id, {}).values() for c in rec.values())
        return total + others

    # --- the proxy's hooks -----------------------------------------------------------------
    def admit(self, request: web.Request, key: ApiKey, reserve: int) -> None:
        """Raise 429 when the key's budget cannot hold this request's reservation (once per
        request: a fallback chain forwards again)."""
        if key.budget is None or RESERVED in request:
            return
        self.budgeted = True
        now = self.clock()
        first, last = budget.period_days(key.budget[1], now)
        used = self.spent(key.id, first, last) + self.inflight.get(key.id, 0)
        budget.check(key, used, reserve, now)
        self.inflight[key.id] = self.inflight.get(key.id, 0) + reserve
        request[RESERVED] = (key.id, reserve)

    def settle(self, request: web.Request, key: ApiKey, model: str, usage: dict[bytes, bytes] | None,
               failed: bool) -> None:
        """An answer was relayed: one request, and its usage when it reported one."""
        if key.budget is not None:  # only a budget reserves (admit)
            self.release(request)
        if failed or not key.id:  # no id: the public image-file route's capability URL, no key
            return
        prompt = int(usage.get(b"prompt_tokens") or 0) if usage else 0
        completion = int(usage.get(b"completion_tokens") or 0) if usage else 0
        if usage and not (prompt or completion):
            prompt = int(usage.get(b"total_tokens") or 0)  # embeddings: total only
        self.record(key.id, model or "-", prompt, completion)

    def release(self, request: web.Request) -> None:
        """Drop the request's budget reservation (settled, failed, or never reported usage)."""
        held = request.get(RESERVED)
        if held:
            request[RESERVED] = None
            key_id, reserve = held
            left = self.inflight.get(key_id, 0) - reserve
            if left > 0:
                self.inflight[key_id] = left
            else:
                self.inflight.pop(key_id, None)

    # --- the store -------------------------------------------------------------------------
    async def sync(self) -> None:
        """One period: read today's records (everyone's), the month's earlier days when the day
        changed or, while budgets are in use, every MONTH_REREAD s; merge our own stored records
        into days not loaded yet (a restart); write what changed; prune old days once a day."""
        now = self.clock()
        today = day_of(now)
        first = month_days(month_of(today))[0]
        ranges = [(today, today)]
        month = first < today and (self._month_read != today or (self.budgeted and now - self._month_at >= MONTH_REREAD))
        if month:
            ranges.append((first, (date.fromisoformat(today) - timedelta(days=1)).isoformat()))
        ranges += [(d, d) for d in sorted({d for d, _ in self.dirty} - self.loaded)
                   if not any(lo <= d <= hi for lo, hi in ranges)]
        others = {d: v for d, v in self.others.items() if first <= d <= today}
        for lo, hi in ranges:
            rows = await self.store.read(lo, hi)
            for day in [d for d in others if lo <= d <= hi]:
                del others[day]
            for day, key_id, gateway, record in rows:
                if gateway != self.gateway_id:
                    if first <= day <= today:
                        others.setdefault(day, {}).setdefault(key_id, {})[gateway] = record
                elif day not in self.loaded:  # a restart: continue from what we had written
                    add_into(self.own.setdefault(day, {}).setdefault(key_id, {}), record)
                    self.dirty.add((day, key_id))
            self.loaded |= set(self._days(lo, hi))
        self.others = others
        self._others_spent.clear()
        self.reads += 1
        if month:
            self._month_read, self._month_at = today, now
        await self.flush()
        if self._pruned != today:
            cutoff = (date.fromisoformat(today) - timedelta(days=self.days - 1)).isoformat()
            await self.store.delete_before(cutoff)
            self._pruned = today
        # Keep in memory only the current month (budgets) and days not written yet.
        for day in [d for d in self.own if not first <= d <= today and not self._has_dirty(d)]:
            del self.own[day]
            self.loaded.discard(day)

    async def flush(self) -> None:
        dirty = sorted((d, k) for d, k in self.dirty if d in self.loaded)
        by_day: dict[str, set[str]] = {}
        for day, key_id in dirty:
            by_day.setdefault(day, set()).add(key_id)
        for day, keys in by_day.items():
            marks = {(day, k) for k in keys}
            self.dirty -= marks  # before the write: a request counted during it marks its key again
            try:
                await self.store.write(day, self.gateway_id, self.own[day], keys)
            except BaseException:
                self.dirty |= marks
                raise
            self.writes += 1

    def _has_dirty(self, day: str) -> bool:
        return any(d == day for d, _ in self.dirty)

    @staticmethod
    def _days(first: str, last: str) -> list[str]:
        start, end = date.fromisoformat(first), date.fromisoformat(last)
        return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-ledger")

    async def stop(self) -> None:
        """Stop the period and write what is left (a clean stop loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self.sync(), 10)
        except Exception as exc:  # noqa: BLE001 - the store is away: say what is lost
            log.error("usage ledger: last write failed (%s); %d records unwritten", exc, len(self.dirty))
        await self.store.close()

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.sync()
                if failing:
                    log.info("usage ledger: store reachable again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep counting in memory and retry
                if not failing:
                    log.warning("usage ledger: store unreachable (%s); counting in memory, retrying", exc)
                failing = True
                await self.store.reset()
            await asyncio.sleep(self.period)

    def report(self) -> dict[str, Any]:
        """For /v1/metadata."""
        return {"gateway_id": self.gateway_id, "store": self.store.describe(), "period": self.period,
                "days": self.days, "writes": self.writes, "reads": self.reads}
