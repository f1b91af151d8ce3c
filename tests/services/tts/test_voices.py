"""GET /v1/audio/voices, NEXUS_TTS_VOICE_MAP, metadata and metrics of the tts service."""

from __future__ import annotations

import aiohttp
import pytest

from nexusd.runtime.settings import ConfigError
from nexusd.services.tts import TTSService
from nexusd.services.tts.backends.espeak import EspeakBackend
from nexusd.services.tts.settings import TTSSettings, parse_voice_map
from nexusd.services.tts.voices import OPENAI_VOICES, VoiceBook
from tests.runtime.support import serve_inprocess
from tests.services.tts.conftest import QUIET, client_for, rms


async def get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_voices_list(espeak):
    body = await get_json(espeak.url + "/v1/audio/voices")
    assert body["object"] == "list" and body["backend"] == "espeak"
    by_id = {v["id"]: v for v in body["data"]}
    for name in OPENAI_VOICES:
        assert by_id[name]["kind"] == "openai" and by_id[name]["backend_voice"]
    assert by_id["en-us"] == {"id": "en-us", "object": "voice", "kind": "native", "name": "English (America)"}
    assert "f3" in body["variants"]


async def test_voice_map_overrides_openai_names(tmp_path):
    async with serve_inprocess(TTSService, QUIET, voice_map="alloy=de,echo=en-gb+m3") as server:
        body = await get_json(server.url + "/v1/audio/voices")
        mapped = {v["id"]: v.get("backend_voice") for v in body["data"] if v["kind"] == "openai"}
        assert mapped["alloy"] == "de" and mapped["echo"] == "en-gb+m3"
        async with client_for(server) as client:
            german = await client.audio.speech.create(model="tts-1", voice="alloy", input="Guten Tag.",
                                                      response_format="wav")
            assert rms(german.content, "wav") > 0.01


def test_voice_map_parsing_and_validation():
    assert parse_voice_map(" alloy = en-us+f3 , Echo=fr ") == {"alloy": "en-us+f3", "echo": "fr"}
    with pytest.raises(ValueError):
        parse_voice_map("alloy")
    with pytest.raises(ValueError):
        TTSSettings(voice_map="alloy=")
    backend = EspeakBackend(TTSSettings())
    backend.load()
    with pytest.raises(ConfigError, match="not OpenAI voice names"):
        VoiceBook(backend, {"robot": "en-us"})
    with pytest.raises(ConfigError, match="no voice 'xx-nowhere'"):
        VoiceBook(backend, {"alloy": "xx-nowhere"})


async def test_metadata_models_and_metrics(espeak):
    doc = await get_json(espeak.url + "/v1/metadata")
    assert doc["service"]["name"] == "tts"
    assert doc["capabilities"]["streaming"] is True
    ops = {(e["method"], e["path"]): e for e in doc["endpoints"]}
    assert ops[("POST", "/v1/audio/speech")]["operation_id"] == "audio.speech"
    assert ops[("POST", "/v1/audio/speech")]["streaming"] is True
    assert ops[("GET", "/v1/audio/voices")]["operation_id"] == "audio.voices"
    (model,) = doc["models"]
    assert model["id"] == "espeak" and model["default_for"] == ["audio.speech"]
    assert set(model["aliases"]) == {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"}

    async with client_for(espeak) as client:
        await client.audio.speech.create(model="tts-1", voice="alloy", input="Count me.", response_format="mp3")
    async with aiohttp.ClientSession() as http, http.get(espeak.url + "/metrics") as resp:
        text = await resp.text()
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
               if line.startswith("nexus_tts_")}
    assert samples['nexus_tts_input_characters_total{backend="espeak"}'] == len("Count me.")
    assert samples['nexus_tts_audio_seconds_total{backend="espeak"}'] > 0.3
    assert samples['nexus_tts_real_time_factor_count{backend="espeak"}'] == 1
    assert samples['nexus_tts_time_to_first_byte_seconds_count{backend="espeak",mode="whole"}'] == 1
