"""The official `openai` client through the gateway, unchanged: models, chat (plain and
streamed, with usage), completions, embeddings, images (b64 and capability URL), speech."""

from __future__ import annotations

import base64

import aiohttp
import openai
import pytest

from tests.services.gateway.backend import PNG


@pytest.fixture
def client(gateway, keys):
    _, plain = keys
    c = openai.AsyncOpenAI(base_url=gateway.api + "/v1", api_key=plain["admin"], max_retries=0, timeout=20)
    yield c


async def test_models_list_and_retrieve(client):
    models = await client.models.list()
    ids = {m.id for m in models.data}
    assert {"tiny-chat", "tiny-embed", "stub-image", "test-voice"} <= ids
    assert all(m.owned_by == "testai" for m in models.data)
    assert (await client.models.retrieve("tiny-chat")).id == "tiny-chat"
    assert (await client.models.retrieve("gpt-4o-mini")).id == "tiny-chat"  # an alias
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_chat_non_streaming(client, backend):
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    chat = raw.parse()
    assert chat.choices[0].message.content == "hello from " + backend.runtime.instance_id
    assert chat.usage.total_tokens == 12
    assert raw.headers["x-nexus-instance"] == backend.runtime.instance_id
    assert raw.headers["x-request-id"]


async def test_chat_streaming_with_usage(client, gateway):
    stream = await client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "t0 t1 t2 t3 t4 "
    assert usage is not None and usage.completion_tokens == 5
    body = (await _get(gateway.obs + "/metrics")).decode()
    assert 'nexus_gateway_key_tokens_total{key="admin",kind="completion_tokens"}' in body


async def test_completions_and_embeddings(client):
    completion = await client.completions.create(model="tiny-chat", prompt="hello")
    assert completion.choices[0].text == " world"
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and emb.data[1].embedding[0] == pytest.approx(0.2)
    emb = await client.embeddings.create(model="tiny-embed", input="a", encoding_format="float")
    assert len(emb.data) == 1


async def test_images_b64_and_capability_url(client, gateway):
    img = await client.images.generate(prompt="a cat", model="dall-e-2", response_format="b64_json")
    assert base64.b64decode(img.data[0].b64_json) == PNG
    img = await client.images.generate(prompt="a cat", response_format="url")
    file_path = img.data[0].url.split("/v1/images/files/", 1)[1]
    # The capability URL works through the gateway without a key.
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.api}/v1/images/files/{file_path}") as r:
        assert r.status == 200
        assert await r.read() == PNG
        assert r.headers["X-Nexus-Instance"]
        # A guessed id is a 404 envelope, still without a key.
    async with aiohttp.ClientSession() as s, s.get(f"{gateway.api}/v1/images/files/nope.png") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"


async def test_speech_streams(client):
    async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="hello there") as resp:
        data = b"".join([chunk async for chunk in resp.iter_bytes()])
    assert data == b"AUDIO0:hello there;AUDIO1:hello there;AUDIO2:hello there;AUDIO3:hello there;"
    speech = await client.audio.speech.create(model="tts-1", voice="alloy", input="x")
    assert speech.content.startswith(b"AUDIO0:x;")


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.read()


async def test_file_urls_go_back_to_the_instance_that_made_them(keys):
    """Two images instances: each capability URL is fetched from its maker, not balanced."""
    from nexusd.runtime.settings import SharedSettings
    from tests.helpers.net import async_wait_for
    from tests.services.gateway.backend import OpenAIDouble
    from tests.services.gateway.harness import serve, serve_gateway

    shared = SharedSettings(etcd_endpoints="", internal_token="")
    async with serve(OpenAIDouble, shared) as a, serve(OpenAIDouble, shared) as b, \
            serve_gateway(keys[0], {"a": a.url, "b": b.url}, shared=shared) as gw:
        async def both() -> bool:
            return len(gw.service.instances.routable()) == 2
        await async_wait_for(both, timeout=10, what="both instances routable")
        client = openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=keys[1]["admin"], max_retries=0)
        makers = {}
        for _ in range(20):  # power of two choices spreads them; keep going until both made one
            img = await client.images.generate(prompt="x", response_format="url")
            file_id = img.data[0].url.rsplit("/", 1)[1]
            makers[file_id.partition(".")[0]] = file_id
            if len(makers) == 2:
                break
        assert set(makers) == {a.runtime.instance_id, b.runtime.instance_id}
        async with aiohttp.ClientSession() as s:
            for instance_id, file_id in makers.items():
                for _ in range(4):
                    async with s.get(f"{gw.api}/v1/images/files/{file_id}") as r:
                        assert r.status == 200 and r.headers["X-Nexus-Instance"] == instance_id
