"""Registrants the gateway should not trust blindly: small real HTTP servers on loopback that
answer /readyz and /v1/metadata with whatever a test gives them (malformed, oversized, claiming
another instance's id), registered in a real etcd, and recording every request they get."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from nexusd.runtime.etcd import etcd_client
from nexusd.runtime.registry import registration_record, service_key
from nexusd.runtime.settings import SharedSettings


class Registrant:
    def __init__(self, metadata: dict[str, Any] | bytes, host: str = "127.0.0.1") -> None:
        self.body = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
        self.host = host
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _any(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers)))
        if request.path == "/readyz":
            return web.json_response({"status": "ready"})
        if request.path == "/v1/metadata":
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"hijacked": True})

    async def __aenter__(self) -> Registrant:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def register(endpoint: str, service: str, instance_id: str, base_url: str) -> None:
    client = etcd_client(SharedSettings(etcd_endpoints=endpoint))
    try:
        record = registration_record(service, instance_id, base_url, "0")
        await client.put(service_key(service, instance_id).encode(), json.dumps(record).encode())
    finally:
        await client.close()
