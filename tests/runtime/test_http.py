"""The shared client forwards X-Request-ID and the internal token to the services it calls, gives
up on a connect that never completes after its connect timeout, and keeps to its per-host pool
limit (real aiohttp servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from nexusd.runtime.http import client_session
from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess


async def test_client_forwards_request_id_and_token():
    shared = SharedSettings(internal_token="tok-1")
    async with serve_inprocess(ProbeService, shared) as server, aiohttp.ClientSession(server.url) as http:
        async with http.get("/v1/forward", headers={"X-Request-ID": "fwd-42", "Authorization": "Bearer tok-1"}) as r:
            assert r.status == 200
            assert await r.json() == {"request_id": "fwd-42", "token": "tok-1"}


# --- connect timeout and pool limit of the shared client -------------------------------------

async def test_connect_timeout_bounds_a_connect_that_never_completes():
    # A listener that never accepts, its backlog filled: further SYNs are dropped by the kernel,
    # so a connect hangs until the client's own connect timeout gives up.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        async with client_session(connect_timeout=0.5, total_timeout=None) as http:
            # the outer bound only turns a hang into a failure; it raises a plain TimeoutError
            with pytest.raises(aiohttp.ConnectionTimeoutError):
                await asyncio.wait_for(http.get(f"http://127.0.0.1:{port}/"), 30)
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.parametrize("limit_per_host", [2, 4])
async def test_pool_limit_per_host_caps_concurrent_requests(limit_per_host):
    n = 4 if limit_per_host == 2 else limit_per_host  # 4 → the control: the server does see 4 at once
    active, seen, peers = 0, [], set()
    releases: list[asyncio.Event] = []

    async def slow(request: web.Request) -> web.Response:
        nonlocal active
        active += 1
        seen.append(active)
        peers.add(request.transport.get_extra_info("peername")[1])
        release = asyncio.Event()
        releases.append(release)
        await release.wait()
        active -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slow"
    try:
        async with client_session(limit_per_host=limit_per_host) as http:
            async def get() -> str:
                async with http.get(url) as r:
                    return await r.text()

            tasks = [asyncio.create_task(get()) for _ in range(n)]
            for released in range(n):  # each time the pool is full at the server, let one finish
                want = min(limit_per_host, n - released)

                async def pool_full(want: int = want, released: int = released) -> bool:
                    return active == want and len(releases) > released
                await async_wait_for(pool_full, timeout=10, what=f"{want} requests at the server")
                releases[released].set()
            assert await asyncio.gather(*tasks) == ["ok"] * n
        assert max(seen) == limit_per_host
        # queued requests reused the pooled keep-alive connections instead of opening new ones
        assert len(peers) == limit_per_host
    finally:
        await runner.cleanup()
