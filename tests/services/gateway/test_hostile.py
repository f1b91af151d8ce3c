"""Defects a security review reproduced from outside the process (issue 11, items 1-3 and 9),
each sent to a real gateway over a socket, with a real backend behind it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from tests.helpers.net import async_wait_for
from tests.services.gateway.rawhttp import http, send_raw

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


def instance(gateway) -> dict:
    (inst,) = gateway.service.aggregation.report()["instances"]
    return inst


async def post(gateway, key, path, body: bytes):
    async with aiohttp.ClientSession() as s, s.post(
            gateway.api + path, data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as r:
        return r.status, await r.json(), r.headers


# --- 1. absolute-form targets must not eject backends --------------------------------------
async def test_absolute_form_target_does_not_eject_the_backend(gateway, keys, backend):
    maker = backend.runtime.instance_id
    for _ in range(5):  # eject_after is 3
        resp = await send_raw(gateway.api, http("GET", f"http://x/v1/images/files/{maker}.a"))
        # relayed with its path only: the backend's own 404 for an unknown file
        assert resp.status == 404, resp.body
        assert resp.headers.get("x-nexus-instance") == maker
    key = keys[1]["admin"]
    body = json.dumps(CHAT).encode()
    for _ in range(4):
        resp = await send_raw(gateway.api, http(
            "POST", "http://x/v1/chat/completions", body=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}))
        assert resp.status == 200, resp.body
    inst = instance(gateway)
    assert inst["state"] == "ready" and gateway.service.instances.instances[backend.url].failures == 0
    assert (await post(gateway, key, "/v1/chat/completions", body))[0] == 200


async def test_clients_that_go_away_do_not_eject_the_backend(keys, tmp_path):
    """A slow backend; four clients hang up mid-request: none of it counts against the instance."""
    from nexusd.runtime.settings import SharedSettings
    from tests.services.gateway.backend import OpenAIDouble
    from tests.services.gateway.harness import routable, serve, serve_gateway

    shared = SharedSettings(etcd_endpoints="", internal_token="")
    async with serve(OpenAIDouble, shared, delay=0.5) as slow, \
            serve_gateway(keys[0], {"slow": slow.url}, shared=shared) as gw:
        async def ready() -> bool:
            return routable(gw, "chat.completions")
        await async_wait_for(ready, timeout=10, what="backend routable")
        body = json.dumps(CHAT).encode()
        request = http("POST", "/v1/chat/completions", body=body, headers={
            "Authorization": f"Bearer {keys[1]['admin']}", "Content-Type": "application/json"})
        host, port = gw.api.removeprefix("http://").split(":")
        for n in range(1, 5):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            await writer.drain()

            async def reached(n=n) -> bool:
                return len(slow.service.seen) >= n
            await async_wait_for(reached, timeout=10, what="request reached the backend")
            writer.close()  # hang up while the backend works on it

        async def aborted() -> bool:
            return slow.service.aborted >= 4
        await async_wait_for(aborted, timeout=10, what="backend saw the hang-ups")
        inst = gw.service.instances.instances[slow.url]
        assert inst.failures == 0 and inst.ejected_until == 0.0


# --- 2. deeply nested JSON is a 400, never a 500 --------------------------------------------
@pytest.mark.parametrize("depth", [65, 1000, 200_000])
async def test_nested_json_is_400(gateway, keys, backend, depth):
    nested = b'{"model":"tiny-chat","messages":[{"role":"user","content":"x","extra":' + \
        b"[" * depth + b"]" * depth + b"}]}"
    status, body, _ = await post(gateway, keys[1]["admin"], "/v1/chat/completions", nested)
    assert status == 400 and body["error"]["code"] == "invalid_json", body
    # and the service's own validation, reached directly
    async with aiohttp.ClientSession() as s, s.post(
            backend.url + "/v1/chat/completions", data=nested,
            headers={"X-Nexus-Internal-Token": "internal-secret-token",
                     "Content-Type": "application/json"}) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"


async def test_nesting_within_the_bound_passes(gateway, keys):
    nested = json.dumps({**CHAT, "metadata": {"a": [[[{"b": [1, 2, {"c": [[]]}]}]]]}}).encode()
    assert (await post(gateway, keys[1]["admin"], "/v1/chat/completions", nested))[0] == 200


# --- 3. a model that does not serve the operation is a 400 -----------------------------------
async def test_model_for_another_operation_is_400_with_what_it_serves(gateway, keys):
    client = openai.AsyncOpenAI(base_url=gateway.api + "/v1", api_key=keys[1]["admin"])  # default retries
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="stub-image", messages=[{"role": "user", "content": "x"}])
    error = err.value.body
    assert error["code"] == "model_not_supported" and error["param"] == "model"
    assert "images.generate" in error["message"]
    served = [p for p, _ in gateway.service.proxy.table.by_model if p == "chat.completions"]
    assert served  # chat itself is served: only that model is wrong
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "x"}])


# --- 9. smaller ones --------------------------------------------------------------------
async def test_server_header_names_no_versions(gateway, keys):
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.api + "/health") as r:
            assert r.headers["Server"] == "nexusd"
        async with s.post(gateway.api + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {keys[1]['admin']}"}) as r:
            assert r.status == 200 and r.headers["Server"] == "nexusd"
    # an answer aiohttp makes itself (a request line it cannot parse)
    resp = await send_raw(gateway.api, b"GARBAGE\r\n\r\n")
    assert resp.status == 400 and resp.headers["server"] == "nexusd"


async def test_failed_authentications_are_throttled_per_address(gateway, keys):
    good = keys[1]["admin"]
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.api + "/v1/models", headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 200  # verified once: not affected by what follows

        async def attempt(i: int) -> tuple[int, str | None]:
            wrong = good[:-4] + f"{i:04d}"
            async with s.get(gateway.api + "/v1/models", headers={"Authorization": f"Bearer {wrong}"}) as r:
                return r.status, r.headers.get("Retry-After")

        results = [await attempt(i) for i in range(40)]
        statuses = [st for st, _ in results]
        assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}, statuses
        assert all(int(ra) >= 1 for st, ra in results if st == 429)
        async with s.get(gateway.api + "/v1/models", headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 200
