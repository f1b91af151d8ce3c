"""Quotas on every route that costs requests or tokens, and OpenAI's x-ratelimit-* headers on
every answer of a limited key, through the real `openai`, `anthropic` and `ollama` clients.

Behind one in-process gateway: the OpenAI test double (chat, completions, embeddings, images,
speech, and here a transcription endpoint), and the real ollama service in front of the Ollama
API test double (the daemon cannot run here). The quota's clock is pinned mid-minute, so the
sliding-minute counts the test reads are exact.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import anthropic
import ollama
import openai
import pytest
from aiohttp import web

from nexusd.runtime import Endpoint, ModelInfo
from nexusd.runtime.settings import SharedSettings
from nexusd.runtime.validation import read_within
from nexusd.services.gateway.quotas import estimate
from nexusd.services.ollama import OllamaService
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import make_keys, routable, serve, serve_gateway
from tests.services.gateway.plain_upstreams import recording_upstream
from tests.services.ollama.ollama_double import OllamaDouble

NATIVE = frozenset({"ollama.native", "chat.completions", "completions", "embeddings", "images.generate",
                    "audio.speech", "audio.transcriptions", "responses.create", "messages.create"})
KEYS: dict[str, dict[str, Any]] = {
    "meter": {"rpm": 1000, "tpm": 10**6, "operations": NATIVE},  # limited, never reached
    "free": {"operations": NATIVE},
    "one": {"rpm": 1, "operations": NATIVE},  # one request a minute
    "tiny": {"tpm": 10, "operations": NATIVE},  # fewer tokens than any reservation
    "thousand": {"tpm": 1000, "operations": NATIVE},
}
TRIOS = [f"x-ratelimit-{k}-{u}" for u in ("requests", "tokens") for k in ("limit", "remaining", "reset")]
CLIENTS: list[Any] = []  # closed by the fixture
TOKENS = 7 + 5  # the OpenAI double's usage for a chat: prompt 7, one completion token per event


class TranscribingDouble(OpenAIDouble):
    """The OpenAI double with a transcription endpoint answering OpenAI's shape, usage included."""

    def endpoints(self) -> list[Endpoint]:
        return [*super().endpoints(),
                Endpoint("POST", "/v1/audio/transcriptions", self.transcribe, "audio.transcriptions")]

    def models(self) -> list[ModelInfo]:
        return [*super().models(), ModelInfo(id="whisper-double", operations=["audio.transcriptions"],
                                             default_for=["audio.transcriptions"])]

    async def transcribe(self, request: web.Request) -> web.Response:
        await read_within(request, 30)
        return web.json_response({"text": "hello", "usage": {"type": "tokens", "input_tokens": 20,
                                                             "output_tokens": 3, "total_tokens": 23}})


@pytest.fixture
async def stack(tmp_path):
    keys = make_keys(tmp_path / "keys", KEYS)
    double = OllamaDouble()
    await double.start()
    shared = SharedSettings(etcd_endpoints="", internal_token="")
    try:
        async with serve(TranscribingDouble, shared) as backend, \
                serve(OllamaService, shared, upstream=double.url, max_tokens=8, context=512) as svc, \
                serve_gateway(tmp_path / "keys", {"testai": backend.url, "ollama": svc.url}, shared=shared) as gw:
            async def ready() -> bool:
                return routable(gw, "ollama.chat") and routable(gw, "audio.transcriptions")
            await async_wait_for(ready, timeout=15, what="both backends routable")
            gw.service.proxy.quotas.share.clock = lambda: 1_000_020.0  # mid-minute, frozen
            yield gw, keys
    finally:
        for client in CLIENTS:
            await (client.close() if hasattr(client, "close") else client._client.aclose())
        CLIENTS.clear()
        await double.stop()


def used(gw, key: str) -> tuple[float, float]:
    """The key's (requests, tokens) in the gateway's quota counts."""
    return gw.service.proxy.quotas.share.used(key.split("-")[1])


def oai(gw, key: str) -> openai.AsyncOpenAI:
    return kept(openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=key, max_retries=0))


def claude(gw, key: str) -> anthropic.AsyncAnthropic:
    return kept(anthropic.AsyncAnthropic(base_url=gw.api, api_key=key, max_retries=0))


def native(gw, key: str) -> ollama.AsyncClient:
    return kept(ollama.AsyncClient(host=gw.api, headers={"Authorization": f"Bearer {key}"}))


def kept(client: Any) -> Any:
    CLIENTS.append(client)
    return client


@contextlib.contextmanager
def counts(gw, key: str, requests: int, tokens: float):
    before = used(gw, key)
    yield
    after = used(gw, key)
    assert (after[0] - before[0], after[1] - before[1]) == (requests, tokens)


async def test_headers_on_every_answer_of_a_limited_key_and_none_for_an_unlimited_one(stack):
    gw, keys = stack
    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    for name, present in (("meter", True), ("free", False)):
        client = oai(gw, keys[name])
        raw = await client.chat.completions.with_raw_response.create(**chat)
        assert raw.parse().usage.total_tokens == TOKENS
        streamed = await client.chat.completions.with_raw_response.create(**chat, stream=True)
        chunks = [c async for c in streamed.parse()]
        assert chunks and all(c.usage is None for c in chunks)  # asked upstream, stripped for us
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(**{**chat, "model": "no-such-model"})
        for headers in (raw.headers, streamed.headers, missing.value.response.headers):
            assert all((h in headers) == present for h in TRIOS), (name, dict(headers))
    raw = await oai(gw, keys["meter"]).chat.completions.with_raw_response.create(**chat)
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert raw.headers["x-ratelimit-limit-tokens"] == str(10**6)
    assert int(raw.headers["x-ratelimit-remaining-requests"]) == 1000 - 4  # 3 before (the 404 too), this one
    # the streamed one settled to its usage too: every chat here used TOKENS; the 404 none
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 10**6 - 3 * TOKENS


async def test_refusals_in_each_routes_format_with_retry_after(stack):
    gw, keys = stack
    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    client = oai(gw, keys["one"])
    await client.chat.completions.create(**chat)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(**chat)
    error, headers = refused.value.body, refused.value.response.headers
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert 1 <= int(headers["retry-after"]) <= 120
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == headers["retry-after"] + "s"
    with pytest.raises(openai.RateLimitError):  # a stream is refused before it starts
        await client.chat.completions.create(**chat, stream=True)

    with pytest.raises(anthropic.RateLimitError) as refused_a:
        await claude(gw, keys["one"]).messages.create(model="tiny-chat", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused_a.value.body["type"] == "error" and refused_a.value.body["error"]["type"] == "rate_limit_error"
    assert int(refused_a.value.response.headers["retry-after"]) >= 1

    with pytest.raises(ollama.ResponseError) as refused_o:
        await native(gw, keys["one"]).chat(model="tinyllama", messages=[{"role": "user", "content": "hi"}])
    assert refused_o.value.status_code == 429 and "requests per minute" in refused_o.value.error

    # tokens: the estimate does not fit a 40-token minute, on every route that costs tokens
    tiny = oai(gw, keys["tiny"])
    with pytest.raises(openai.RateLimitError) as refused_t:
        await tiny.chat.completions.create(**chat)
    assert refused_t.value.response.headers["x-ratelimit-limit-tokens"] == "10"
    with pytest.raises(openai.RateLimitError):
        await tiny.responses.create(model="tiny-chat", input="hi", stream=True)
    with pytest.raises(openai.RateLimitError):
        await tiny.embeddings.create(model="tiny-embed", input="x" * 400)
    assert used(gw, keys["tiny"]) == (0, 0)  # refused: nothing counted


async def test_every_route_counts_requests_and_tokens(stack):
    gw, keys = stack
    client = oai(gw, keys["meter"])
    with counts(gw, keys["meter"], 1, 2):  # the double's usage: 2 inputs
        await client.embeddings.create(model="tiny-embed", input=["a", "b"])
    with counts(gw, keys["meter"], 1, 2):
        await client.completions.create(model="tiny-chat", prompt="x", max_tokens=3)
    body = b'{"model":"stub-image","prompt":"a cat","n":1,"response_format":"b64_json"}'
    with counts(gw, keys["meter"], 1, estimate(body)):  # no usage in the answer: the estimate stands
        await client.images.generate(model="stub-image", prompt="a cat", n=1, response_format="b64_json")
    speech = await client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="hello")
    assert speech.headers["x-ratelimit-limit-tokens"] == str(10**6)  # a raw stream carries them too
    with counts(gw, keys["meter"], 1, 23):  # the multipart relay: the answer's usage
        await client.audio.transcriptions.create(model="whisper-double", file=("a.wav", io.BytesIO(b"RIFF" * 99)))
    with counts(gw, keys["meter"], 1, TOKENS):  # Responses, streamed, through the real client
        events = [e async for e in await client.responses.create(model="tiny-chat", input="hi", stream=True)]
        assert events[-1].response.usage.total_tokens == TOKENS
    with counts(gw, keys["meter"], 1, TOKENS):  # Messages, streamed, through the real client
        async with claude(gw, keys["meter"]).messages.stream(model="tiny-chat", max_tokens=5,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
            final = await stream.get_final_message()
        assert final.usage.input_tokens + final.usage.output_tokens == TOKENS
    for stream in (False, True):  # Ollama's native chat: its eval counts, streamed or not
        before = used(gw, keys["meter"])
        reply = await native(gw, keys["meter"]).chat(model="tinyllama", messages=[{"role": "user", "content": "hi"}],
                                                      stream=stream)
        last = [part async for part in reply][-1] if stream else reply
        after = used(gw, keys["meter"])
        assert after[0] - before[0] == 1 and after[1] - before[1] == last.prompt_eval_count + last.eval_count


async def test_a_plain_upstreams_streams_count_their_usage(tmp_path):
    """A plain OpenAI-compatible upstream (upstreams.py; the recording upstream of
    plain_upstreams.py): a stream the client did not ask usage for still settles to it."""
    async with recording_upstream() as rec:
        upstreams = tmp_path / "upstreams.toml"
        upstreams.write_text(f'[upstreams.recorder]\nbase_url = "{rec.url}/"\noperations = ["chat.completions"]\n')
        keys = make_keys(tmp_path / "keys", {"meter": KEYS["meter"]})
        async with serve_gateway(tmp_path / "keys", {}, upstreams=upstreams) as gw:
            async def ready() -> bool:
                return ("chat.completions", "rec-model") in gw.service.proxy.table.by_model
            await async_wait_for(ready, timeout=15, what="the plain upstream routable")
            gw.service.proxy.quotas.share.clock = lambda: 1_000_020.0
            client = oai(gw, keys["meter"])
            try:
                with counts(gw, keys["meter"], 1, 5):  # the recorder's usage: 3 + 2
                    raw = await client.chat.completions.with_raw_response.create(
                        model="rec-model", messages=[{"role": "user", "content": "hi"}], stream=True)
                    assert all(c.usage is None for c in [c async for c in raw.parse()])
                assert raw.headers["x-ratelimit-limit-tokens"] == str(10**6)
                assert rec.chats()[-1][1]["stream_options"] == {"include_usage": True}
            finally:
                await client.close()
                CLIENTS.clear()


async def test_n_choices_reserve_n_times_and_settle_to_the_usage(stack):
    gw, keys = stack
    client = oai(gw, keys["thousand"])
    chat = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300}
    with pytest.raises(openai.RateLimitError):  # 4 × 300 + the prompt > 1000, though one 300 fits
        await client.chat.completions.create(**chat, n=4)
    assert used(gw, keys["thousand"]) == (0, 0)
    with counts(gw, keys["thousand"], 1, TOKENS):  # 3 × 300 fits; settled to the answer's usage
        await client.chat.completions.create(**chat, n=3)
