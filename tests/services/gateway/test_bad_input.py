"""Bad requests get the right OpenAI envelope, and the gateway stays ready."""

from __future__ import annotations

import aiohttp
import pytest

from tests.helpers.net import async_wait_for
from tests.services.gateway.harness import routable

CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


async def send(gateway, key, method, path, *, data=None, json=None, headers=None):
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    async with aiohttp.ClientSession() as s, s.request(method, gateway.api + path, data=data, json=json,
                                                        headers=h) as r:
        return r.status, await r.json(), r.headers


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("POST", "/v1/chat/completions", {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
     400, "invalid_json"),
    ("POST", "/v1/chat/completions", {"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
     400, "invalid_json"),
    ("POST", "/v1/completions", {"json": {"prompt": "x"}}, 400, "missing_required_parameter"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "model": 5}}, 400, "invalid_value"),
    ("POST", "/v1/chat/completions", {"json": {**CHAT, "model": "no-such-model"}}, 404, "model_not_found"),
    ("POST", "/v1/embeddings", {"json": {"model": "tiny-embed", "input": "x", "stream": True}},
     400, "streaming_unsupported"),
    ("POST", "/v1/chat/completions", {"data": b"model=x", "headers": {"Content-Type": "text/plain"}},
     415, "unsupported_media_type"),
    ("POST", "/v1/chat/completions", {"data": b"x" * (5 << 20), "headers": {"Content-Type": "application/json"}},
     413, "request_too_large"),
    ("GET", "/v1/unknown", {}, 404, "not_found"),
    ("GET", "/v1/chat/completions", {}, 405, "method_not_allowed"),
])
async def test_bad_input_envelopes(gateway, keys, method, path, kwargs, status, code):
    got, body, headers = await send(gateway, keys[1]["admin"], method, path, **kwargs)
    assert got == status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert headers["X-Request-ID"]
    async with aiohttp.ClientSession() as s, s.get(gateway.obs + "/readyz") as r:
        assert r.status == 200
    # and it still serves
    assert (await send(gateway, keys[1]["admin"], "POST", "/v1/chat/completions", json=CHAT))[0] == 200


async def test_model_known_but_not_ready_is_503(gateway, keys, backend):
    """The only instance of a model went unready: 503 with Retry-After, not 404."""
    backend.service.loaded = False

    async def unroutable() -> bool:
        return not routable(gateway, "chat.completions")

    await async_wait_for(unroutable, timeout=10, what="backend no longer routable")
    status, body, headers = await send(gateway, keys[1]["admin"], "POST", "/v1/chat/completions", json=CHAT)
    assert status == 503 and body["error"]["code"] == "no_instance_available"
    assert headers["Retry-After"]
