"""The shared client forwards X-Request-ID and the internal token to the services it calls."""

from __future__ import annotations

import aiohttp

from nexusd.runtime.settings import SharedSettings
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess


async def test_client_forwards_request_id_and_token():
    shared = SharedSettings(internal_token="tok-1")
    async with serve_inprocess(ProbeService, shared) as server, aiohttp.ClientSession(server.url) as http:
        async with http.get("/v1/forward", headers={"X-Request-ID": "fwd-42", "Authorization": "Bearer tok-1"}) as r:
            assert r.status == 200
            assert await r.json() == {"request_id": "fwd-42", "token": "tok-1"}
