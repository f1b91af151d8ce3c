"""The public image-file route (issue 11, item 7): fetches, even with a bogus token for a known
instance, have their own admission and never take the generation slot; the route is rate
limited per client address, and X-Forwarded-For counts only from NEXUS_GATEWAY_TRUSTED_PROXIES."""

from __future__ import annotations

import asyncio

import aiohttp

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import routable, serve, serve_gateway

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
SHARED = SharedSettings(etcd_endpoints="", internal_token="")


async def ready(gw) -> None:
    async def check() -> bool:
        return routable(gw, "chat.completions")
    await async_wait_for(check, timeout=10, what="backend routable")


async def test_bogus_file_fetches_do_not_take_the_generation_slot(keys):
    # one generation slot and a queue of one, as the images service declares
    async with serve(OpenAIDouble, SHARED, max_inflight=1, file_delay=1.0) as backend, \
            serve_gateway(keys[0], {"b": backend.url}, shared=SHARED) as gw:
        await ready(gw)
        maker = backend.runtime.instance_id
        async with aiohttp.ClientSession() as s:
            async def fetch() -> int:
                async with s.get(f"{gw.api}/v1/images/files/{maker}.bogus.png") as r:
                    return r.status
            fetches = [asyncio.ensure_future(fetch()) for _ in range(3)]

            async def arrived() -> bool:
                return sum(1 for p, _ in backend.service.seen if p.startswith("/v1/images/files/")) >= 3
            await async_wait_for(arrived, timeout=10, what="file fetches reached the backend")
            # while they are in flight, a paying client still gets its generation
            async with s.post(gw.api + "/v1/chat/completions", json=CHAT,
                              headers={"Authorization": f"Bearer {keys[1]['admin']}"}) as r:
                assert r.status == 200, await r.text()
            assert await asyncio.gather(*fetches) == [404, 404, 404]


async def test_file_route_rate_limit_per_client_address(keys):
    async with serve(OpenAIDouble, SHARED) as backend, \
            serve_gateway(keys[0], {"b": backend.url}, shared=SHARED, file_fetches_per_minute=3) as gw:
        await ready(gw)
        url = f"{gw.api}/v1/images/files/{backend.runtime.instance_id}.nope.png"
        async with aiohttp.ClientSession() as s:
            statuses = []
            for i in range(5):  # a forged X-Forwarded-For from an untrusted peer changes nothing
                async with s.get(url, headers={"X-Forwarded-For": f"203.0.113.{i}"}) as r:
                    statuses.append(r.status)
                    retry = r.headers.get("Retry-After")
            assert statuses == [404, 404, 404, 429, 429] and retry and int(retry) >= 1


async def test_forwarded_for_counts_from_trusted_proxies(keys):
    async with serve(OpenAIDouble, SHARED) as backend, \
            serve_gateway(keys[0], {"b": backend.url}, shared=SHARED, file_fetches_per_minute=2,
                          trusted_proxies="127.0.0.0/8") as gw:
        await ready(gw)
        url = f"{gw.api}/v1/images/files/{backend.runtime.instance_id}.nope.png"
        async with aiohttp.ClientSession() as s:
            async def status(xff: str) -> int:
                async with s.get(url, headers={"X-Forwarded-For": xff}) as r:
                    return r.status
            assert [await status("198.51.100.7") for _ in range(3)] == [404, 404, 429]
            # another client behind the same proxy has its own allowance
            assert await status("198.51.100.8") == 404
            # the nearest untrusted hop counts, not what the client put in front of it
            assert await status("10.9.9.9, 198.51.100.7") == 429
