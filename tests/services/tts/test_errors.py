"""Bad input gets OpenAI's 400 envelope naming the parameter, and the service keeps serving."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from tests.helpers.net import async_wait_for
from tests.services.tts.conftest import client_for, rms

GOOD = {"model": "tts-1", "voice": "alloy", "input": "Hello there."}
BAD = [
    ({"input": ""}, "input"),
    ({"input": "   \n "}, "input"),
    ({"input": "a" * 4097}, "input"),
    ({"voice": "nobody"}, "voice"),
    ({"voice": "en-us+nosuchvariant"}, "voice"),
    ({"response_format": "ogg"}, "response_format"),
    ({"speed": 0.1}, "speed"),
    ({"speed": 4.5}, "speed"),
    ({"stream_format": "websocket"}, "stream_format"),
    ({"voice": {"id": 5}}, "voice"),
]


@pytest.mark.parametrize(("change", "param"), BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
async def test_bad_input_is_400_and_service_stays_ready(espeak, change, param):
    async with client_for(espeak) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.post("/audio/speech", body={**GOOD, **change}, cast_to=bytes)
        error = info.value.body
        assert isinstance(error, dict) and error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert error["message"]
        resp = await client.audio.speech.create(**GOOD, response_format="wav")
        assert rms(resp.content, "wav") > 0.01
    async with aiohttp.ClientSession() as http, http.get(espeak.url + "/readyz") as ready:
        assert ready.status == 200


async def test_longest_input_is_accepted(espeak):
    text = ("Word " * 819) + "end."  # 4099 - 3 = 4096 characters
    text = text[:4096]
    async with client_for(espeak) as client:
        resp = await client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="pcm")
    assert len(resp.content) > 24000 * 2 * 60  # minutes of speech


async def test_unknown_model_is_404(espeak):
    async with client_for(espeak) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.audio.speech.create(model="dall-e-3", voice="alloy", input="Hi.")
    assert info.value.body["code"] == "model_not_found"


async def test_missing_voice_and_bad_json(espeak):
    async with aiohttp.ClientSession() as http:
        async with http.post(espeak.url + "/v1/audio/speech", json={"input": "Hi."}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "voice"
        async with http.post(espeak.url + "/v1/audio/speech", data=b"{nope",
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_json"


async def test_voice_as_an_object_with_an_id(espeak):
    """OpenAI's custom-voice shape {"id": ...} (docs/tts.md) speaks with that voice."""
    async with client_for(espeak) as client:
        data = await client.post("/audio/speech", body={**GOOD, "voice": {"id": "en-gb"},
                                                         "response_format": "wav"}, cast_to=bytes)
    assert rms(data, "wav") > 0.01


async def test_beyond_inflight_and_queue_is_429_and_admitted_complete():
    """max_inflight requests run, max_queue wait; the next gets 429 with Retry-After, the
    admitted ones (running and queued) still finish, and the slot is free again afterwards."""
    from nexusd.services.tts import TTSService
    from tests.runtime.support import serve_inprocess
    from tests.services.tts.conftest import QUIET

    long_text = " ".join(f"This is sentence number {i} of a long text." for i in range(40))
    body = {"model": "tts-1", "voice": "alloy", "input": long_text, "response_format": "pcm",
            "stream_format": "audio"}
    async with serve_inprocess(TTSService, QUIET, backend="espeak", max_inflight=1, max_queue=1) as server:
        url = server.url + "/v1/audio/speech"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            first = await http.post(url, json=body)
            assert first.status == 200
            await first.content.readany()  # running and producing audio
            queued = asyncio.create_task(http.post(url, json=body))
            await async_wait_for(lambda: _true(server.service.admission.waiting == 1), what="one request queued")
            async with http.post(url, json=body) as third:
                assert third.status == 429 and int(third.headers["Retry-After"]) >= 1
                assert (await third.json())["error"]["code"] == "queue_full"
            assert len(await first.read()) > 0
            second = await queued  # its turn came when the first finished
            assert second.status == 200 and len(await second.read()) > 0
            first.release()
            second.release()
            async with http.post(url, json={**body, "input": "Free again."}) as again:
                assert again.status == 200 and len(await again.read()) > 0


async def _true(value: object) -> object:
    return value
