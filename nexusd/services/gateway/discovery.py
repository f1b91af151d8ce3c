"""Where backends come from: the environment (static) and etcd (dynamic).

etcd: list the prefix, then watch from the list's revision + 1. A dropped watch stream resumes
from the last revision seen, so no event is lost; a `RevisionCompactedError` (that revision is
gone) means relisting. While etcd is unreachable the last known instances stay, and we retry
with backoff. Records of service `gateway` (ourselves, or a peer gateway) are skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from nexusd.runtime.registry import PREFIX
from nexusd.runtime.settings import SharedSettings
from nexusd.services.gateway.instances import InstanceSet

log = logging.getLogger("nexusd.gateway.discovery")


def add_static(instances: InstanceSet, backends: dict[str, str]) -> None:
    for name, url in backends.items():
        instances.add(url, f"env:{name}")


def parse_record(value: bytes) -> tuple[str, str] | None:
    """(service, base_url) from a registration record, or None when it is not usable."""
    try:
        doc = json.loads(value)
        service, url = str(doc["service"]), str(doc["base_url"])
    except (ValueError, KeyError, TypeError):
        return None
    if not url.startswith(("http://", "https://")):
        return None
    return service, url


class EtcdDiscovery:
    def __init__(self, shared: SharedSettings, instances: InstanceSet, *, retry: float,
                 on_event: Callable[[str], None]) -> None:
        self.shared = shared
        self.instances = instances
        self.retry = retry
        self.on_event = on_event
        self.revision = 0  # last revision applied; 0 = must (re)list
        self.synced = asyncio.Event()  # set after the first successful list
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._client = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-etcd-discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        from nexusd.runtime.etcd import close_quietly

        client, self._client = self._client, None
        await close_quietly(client)

    async def _run(self) -> None:
        import aetcd.exceptions

        from nexusd.runtime.etcd import etcd_client

        backoff = 0.25
        while True:
            try:
                if self._client is None:
                    self._client = etcd_client(self.shared)
                if self.revision == 0:
                    await self._list()
                backoff = 0.25
                await self._watch()
            except asyncio.CancelledError:
                raise
            except aetcd.exceptions.RevisionCompactedError:
                log.warning("etcd compacted past revision %d; relisting", self.revision)
                self.on_event("compacted")
                self.revision = 0
            except Exception as exc:  # noqa: BLE001 - etcd down: keep the last table and retry
                if self.connected:
                    log.warning("etcd unreachable (%s); keeping %d instances, retrying",
                                type(exc).__name__, len(self.instances.instances))
                    self.on_event("watch_error")
                self.connected = False
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry)

    async def _list(self) -> None:
        assert self._client is not None
        result = await self._client.get_prefix(PREFIX.encode())
        seen: set[str] = set()
        for kv in result:
            self._put(kv.key.decode(), kv.value)
            seen.add(f"etcd:{kv.key.decode()}")
        for source in self.instances.sources("etcd:") - seen:  # gone while we were not watching
            self.instances.remove_source(source)
        self.revision = result.header.revision
        self.connected = True
        self.synced.set()
        self.on_event("relist")
        log.info("etcd: %d registrations at revision %d", len(seen), self.revision)

    async def _watch(self) -> None:
        assert self._client is not None
        watch = await self._client.watch_prefix(PREFIX.encode(), start_revision=self.revision + 1)
        self.connected = True
        try:
            async for event in watch:
                key = event.kv.key.decode()
                if event.kind == "PUT":
                    self._put(key, event.kv.value)
                else:
                    self.instances.remove_source(f"etcd:{key}")
                    self.on_event("deleted")
                self.revision = max(self.revision, event.kv.mod_revision)
        finally:
            try:
                await asyncio.wait_for(watch.cancel(), 1)
            except Exception:  # noqa: BLE001 - the stream may already be gone
                pass
        raise ConnectionError("etcd watch stream ended")

    def _put(self, key: str, value: bytes) -> None:
        record = parse_record(value)
        source = f"etcd:{key}"
        if record is None:
            log.warning("ignoring unreadable registration at %s", key)
            return
        service, url = record
        if service == "gateway":
            return
        # A re-registration may carry a new URL: drop the old binding first.
        for inst in list(self.instances.instances.values()):
            if source in inst.sources and inst.base_url != url.rstrip("/"):
                self.instances.remove_source(source)
                break
        self.instances.add(url, source)
