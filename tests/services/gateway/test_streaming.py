"""SSE relay: an upstream that dies mid-stream gives the client an OpenAI-style error event and
a clean end; the gateway stays ready and serves the next request. A client that goes away
cancels the upstream request."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.conftest import INTERNAL
from tests.services.gateway.harness import routable, serve, serve_gateway

MSG = [{"role": "user", "content": "hi"}]


async def test_upstream_dies_midstream(gateway, keys):
    client = openai.AsyncOpenAI(base_url=gateway.api + "/v1", api_key=keys[1]["admin"], max_retries=0)
    stream = await client.chat.completions.create(model="dies-midstream", messages=MSG, stream=True)
    got = []
    with pytest.raises(openai.APIError, match="ended the stream early"):
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert got == ["t0 ", "t1 "]  # what arrived before the failure was relayed as it came

    # The raw stream: error event, then a clean end of the chunked body (no exception).
    async with aiohttp.ClientSession() as s, s.post(
            gateway.api + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys[1]['admin']}"},
            json={"model": "dies-midstream", "messages": MSG, "stream": True}) as r:
        raw = await r.read()
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1].startswith("data: {")
    error = json.loads(events[-1][len("data: "):])["error"]
    assert error["code"] == "upstream_disconnected" and error["type"] == "server_error"

    async with aiohttp.ClientSession() as s, s.get(gateway.obs + "/readyz") as r:
        assert r.status == 200
    chat = await client.chat.completions.create(model="tiny-chat", messages=MSG)
    assert chat.choices[0].message.content.startswith("hello from")


async def test_stream_is_relayed_chunk_by_chunk(gateway, keys):
    """The first event reaches the client before the upstream has finished (no buffering)."""
    async with aiohttp.ClientSession() as s, s.post(
            gateway.api + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys[1]['admin']}"},
            json={"model": "tiny-chat", "messages": MSG, "stream": True}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Length" not in r.headers
        assert r.headers["X-Nexus-Instance"]
        body = await r.read()
    assert body.endswith(b"data: [DONE]\n\n")


async def test_client_disconnect_cancels_upstream(tmp_path, keys):
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL), delay=1.0) as slow:
        async with serve_gateway(keys[0], {"slow": slow.url},
                                 shared=SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as gw:
            async def ok() -> bool:
                return routable(gw, "chat.completions")
            await async_wait_for(ok, timeout=10, what="routable")
            async with aiohttp.ClientSession() as s:
                task = asyncio.create_task(s.post(
                    gw.api + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys[1]['admin']}"},
                    json={"model": "tiny-chat", "messages": MSG}))

                async def inflight() -> bool:
                    return any(i.outstanding for i in gw.service.instances.instances.values())
                await async_wait_for(inflight, timeout=5, what="request in flight upstream")
                task.cancel()  # the client goes away
                with pytest.raises(asyncio.CancelledError):
                    await task

            async def aborted() -> bool:
                return slow.service.aborted == 1
            await async_wait_for(aborted, timeout=5, what="upstream saw its connection closed")
            assert all(i.outstanding == 0 for i in gw.service.instances.instances.values())
