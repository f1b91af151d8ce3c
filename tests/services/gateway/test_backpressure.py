"""Per-instance concurrency from the backend's metadata (max_inflight 1, max_queue 1): more
concurrent requests than that get 429 with Retry-After at once; none is lost silently and the
admitted ones complete. A queued request that waits too long gets 503 with Retry-After."""

from __future__ import annotations

import asyncio

import aiohttp

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import routable, serve, serve_gateway

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
NO_ETCD = SharedSettings(etcd_endpoints="", internal_token="")


async def burst(gw, key, n):
    async with aiohttp.ClientSession() as s:
        async def one():
            async with s.post(gw.api + "/v1/chat/completions", json=CHAT,
                              headers={"Authorization": f"Bearer {key}"}) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")
        return await asyncio.gather(*(one() for _ in range(n)))


async def test_overflow_gets_429_and_admitted_complete(keys):
    async with serve(OpenAIDouble, NO_ETCD, max_inflight=1, delay=0.5) as backend, \
            serve_gateway(keys[0], {"b": backend.url}, shared=NO_ETCD) as gw:
        async def ok() -> bool:
            return routable(gw, "chat.completions")
        await async_wait_for(ok, timeout=10, what="routable")
        inst = next(iter(gw.service.instances.instances.values()))
        assert (inst.max_inflight, inst.max_queue) == (1, 1)
        results = await burst(gw, keys[1]["admin"], 6)
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 200, 429, 429, 429, 429]
    for status, body, retry in results:
        if status == 200:
            assert body["choices"][0]["message"]["content"].startswith("hello from")
        else:
            assert body["error"]["code"] == "overloaded" and int(retry) >= 1
    assert backend.service.aborted == 0


async def test_queue_timeout_gets_503(keys):
    async with serve(OpenAIDouble, NO_ETCD, max_inflight=1, delay=1.0) as backend, \
            serve_gateway(keys[0], {"b": backend.url}, shared=NO_ETCD, queue_timeout=0.2) as gw:
        async def ok() -> bool:
            return routable(gw, "chat.completions")
        await async_wait_for(ok, timeout=10, what="routable")
        results = await burst(gw, keys[1]["admin"], 2)
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 503]
    body, retry = next((r[1], r[2]) for r in results if r[0] == 503)
    assert body["error"]["code"] == "queue_timeout" and int(retry) >= 1


async def test_a_model_bound_is_honoured_beside_the_instance_bound(keys):
    """A model that declares its own concurrency (one at a time, nobody waits) is bounded by the
    gateway even though its instance declares none; another model of the instance still passes."""
    async with serve(OpenAIDouble, NO_ETCD, model_inflight=1, delay=0.5) as backend, \
            serve_gateway(keys[0], {"b": backend.url}, shared=NO_ETCD) as gw:
        async def ok() -> bool:
            return routable(gw, "chat.completions")
        await async_wait_for(ok, timeout=10, what="routable")
        inst = next(iter(gw.service.instances.instances.values()))
        gate = inst.model_gates["tiny-chat"]
        assert (gate.max_inflight, gate.max_queue) == (1, 0) and "tiny-embed" not in inst.model_gates

        async def embed() -> int:
            async with aiohttp.ClientSession() as s, s.post(
                    gw.api + "/v1/embeddings", json={"model": "tiny-embed", "input": "x"},
                    headers={"Authorization": f"Bearer {keys[1]['admin']}"}) as r:
                return r.status

        results, embedded = await asyncio.gather(burst(gw, keys[1]["admin"], 3), embed())
        assert (gate.outstanding, len(gate.waiters)) == (0, 0)
    assert sorted(r[0] for r in results) == [200, 429, 429]
    assert embedded == 200
    for status, body, retry in results:
        if status == 429:
            assert body["error"]["code"] == "overloaded" and int(retry) >= 1
