"""Ollama's native routes through the gateway (issue 11, item 5): only a key whose --ops name
`ollama.native` (inference, listing) or `ollama.admin` (pull and other model management) gets
in, the model in a native body is checked against the key's models, and the ollama service caps
native generation (num_predict, num_ctx) as it caps the OpenAI routes.

The Ollama daemon cannot run here: behind the real ollama service is the Ollama API test double
(tests/services/ollama/ollama_double.py)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from nexusd.runtime.settings import SharedSettings
from nexusd.services.ollama import OllamaService
from tests.helpers.net import async_wait_for
from tests.services.gateway.harness import make_keys, routable, serve, serve_gateway
from tests.services.ollama.ollama_double import OllamaDouble


@pytest.fixture
async def stack(tmp_path):
    double = OllamaDouble()
    await double.start()
    keys = make_keys(tmp_path / "keys", {
        "plain": {},
        "small": {"operations": frozenset({"ollama.native"}), "models": frozenset({"tinyllama"})},
        "admin": {"operations": frozenset({"ollama.admin", "ollama.native"})},
    })
    shared = SharedSettings(etcd_endpoints="", internal_token="")
    try:
        async with serve(OllamaService, shared, upstream=double.url, max_tokens=8, context=512) as svc, \
                serve_gateway(tmp_path / "keys", {"ollama": svc.url}, shared=shared) as gw:
            async def ready() -> bool:
                return routable(gw, "ollama.chat")
            await async_wait_for(ready, timeout=15, what="ollama native routes routable")
            yield gw, keys, double, svc
    finally:
        await double.stop()


async def call(gw, key: str, method: str, path: str, json=None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.request(method, gw.api + path, json=json,
                                                        headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.read()


def chat(model: str, **options) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": options}


async def test_native_routes_need_their_scope(stack):
    gw, keys, _, _ = stack
    # a key with no --ops limit reaches the OpenAI routes but no native one
    for method, path, body in [("GET", "/api/tags", None), ("POST", "/api/chat", chat("tinyllama")),
                               ("POST", "/api/pull", {"model": "llama3.2"})]:
        status, text = await call(gw, keys["plain"], method, path, body)
        assert status == 403 and b"may not use ollama." in text, (path, text)
        assert list(json.loads(text)) == ["error"]  # Ollama's error shape on /api/*
    assert (await call(gw, keys["small"], "GET", "/api/tags"))[0] == 200
    status, text = await call(gw, keys["small"], "POST", "/api/pull", {"model": "tinyllama"})
    assert status == 403 and b"ollama.admin" in text
    status, _ = await call(gw, keys["admin"], "POST", "/api/pull", {"model": "llama3.2", "stream": False})
    assert status == 200


async def test_native_body_model_is_checked_against_the_key(stack):
    gw, keys, _, _ = stack
    assert (await call(gw, keys["small"], "POST", "/api/chat", chat("tinyllama")))[0] == 200
    assert (await call(gw, keys["small"], "POST", "/api/chat", chat("tinyllama:latest")))[0] == 200
    for body in (chat("all-minilm"), {"name": "all-minilm", "prompt": "x", "stream": False}):
        path = "/api/chat" if "messages" in body else "/api/generate"
        status, text = await call(gw, keys["small"], "POST", path, body)
        assert status == 403 and json.loads(text) == {"error": f"This API key may not use model '{body.get('model') or body['name']}'"}, text
    status, text = await call(gw, keys["small"], "POST", "/api/show", {"name": "all-minilm"})
    assert status == 403


async def test_service_caps_native_generation(stack):
    gw, keys, double, svc = stack
    async with aiohttp.ClientSession() as s, s.post(svc.url + "/api/chat",  # the service itself
                                                    json=chat("tinyllama", num_predict=-1)) as r:
        assert r.status == 200
    assert double.requests[-1][3]["options"]["num_predict"] == 8
    async with aiohttp.ClientSession() as s, s.post(svc.url + "/api/chat", data=b"[" * 100000,
                                                    headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400 and "error" in await r.json()  # Ollama's error shape
    double.requests.clear()
    for options in ({}, {"num_predict": -1}, {"num_predict": 100000, "num_ctx": 1 << 20}, {"num_predict": 3}):
        assert (await call(gw, keys["admin"], "POST", "/api/chat", chat("tinyllama", **options)))[0] == 200
    sent = [body["options"] for _, path, _, body in double.requests if path == "/api/chat"]
    assert [o["num_predict"] for o in sent] == [8, 8, 8, 3]
    assert sent[2]["num_ctx"] == 512
    status, text = await call(gw, keys["admin"], "POST", "/api/generate",
                              {"model": "tinyllama", "prompt": "x", "stream": False, "options": {"num_predict": 1e9}})
    assert status == 200
    assert [b for _, p, _, b in double.requests if p == "/api/generate"][-1]["options"]["num_predict"] == 8
