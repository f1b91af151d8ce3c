"""Registration in etcd: `/nexus/services/<service>/<instance_id>` → JSON, under a lease.

The lease (TTL ~10 s) is refreshed every TTL/3. When a refresh fails (etcd restarted, lease
expired) we grant a new lease and put the key again, retrying with backoff until etcd is back.
On stop the key is deleted and the lease revoked, so the gateway drops us at once.
Without NEXUS_ETCD_ENDPOINTS `NullRegistry` does nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

from nexusd.runtime.settings import SharedSettings

log = logging.getLogger("nexusd.registry")
PREFIX = "/nexus/services/"


def service_key(service: str, instance_id: str) -> str:
    return f"{PREFIX}{service}/{instance_id}"


class NullRegistry:
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class EtcdRegistry:
    def __init__(self, shared: SharedSettings, record: dict[str, Any]) -> None:
        self.shared = shared
        self.record = record
        self.key = service_key(record["service"], record["instance_id"]).encode()
        self.ttl = shared.etcd_ttl
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._lease: Any = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="etcd-registration")

    async def _register(self) -> None:
        from nexusd.runtime.etcd import etcd_client

        if self._client is None:
            self._client = etcd_client(self.shared)
        self._lease = await self._client.lease(self.ttl)
        await self._client.put(self.key, json.dumps(self.record).encode(), lease=self._lease)
        self.registered.set()
        log.info("registered in etcd as %s (lease %x)", self.key.decode(), self._lease.id)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                if self._lease is None:
                    await self._register()
                    backoff = 0.5
                await asyncio.sleep(self.ttl / 3)
                reply = await self._lease.refresh()
                if reply is None or reply.TTL <= 0:  # the lease expired while we could not reach etcd
                    raise LookupError("lease expired")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd down or restarted: keep serving, register again
                if self.registered.is_set():
                    log.warning("etcd registration lost (%s); retrying", type(exc).__name__)
                elif backoff == 0.5:  # first failure of a streak: say so once (bad TLS/password is silent otherwise)
                    log.warning("etcd registration failed (%s); retrying", type(exc).__name__)
                self.registered.clear()
                self._lease = None
                await self._reset_client()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.ttl / 3)

    async def _reset_client(self) -> None:
        from nexusd.runtime.etcd import close_quietly

        client, self._client = self._client, None
        await close_quietly(client)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None and self._lease is not None:
            try:
                await asyncio.wait_for(self._client.delete(self.key), 2)
                await asyncio.wait_for(self._lease.revoke(), 2)
                log.info("deregistered %s", self.key.decode())
            except Exception as exc:  # noqa: BLE001 - the lease runs out anyway
                log.warning("could not deregister from etcd: %s", exc)
        await self._reset_client()


def registration_record(service: str, instance_id: str, base_url: str, version: str) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "service": service,
        "instance_id": instance_id,
        "host": socket.gethostname(),
        "version": version,
        "started_at": time.time(),
    }
