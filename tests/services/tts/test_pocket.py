"""The pocket backend on the real pocket-tts code path, with a tiny locally built model (random
weights, see fixtures/tiny_pocket.py): config from local paths, tokenizer, voice prompt -> state,
streamed generation in the worker, and the cap on a sentence that never ends.
Random weights say nothing intelligible; operators provide real weights (docs/tts.md)."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from nexusd.runtime.settings import ConfigError
from nexusd.services.tts import TTSService
from nexusd.services.tts.settings import TTSSettings
from tests.runtime.support import serve_inprocess
from tests.services.tts.conftest import QUIET, client_for, decode

pytest.importorskip("pocket_tts")

CAP = 0.4  # seconds of audio per sentence


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from fixtures.tiny_pocket import build

    return build(tmp_path_factory.mktemp("pocket"))


@pytest.fixture
async def pocket(tiny_model):
    async with serve_inprocess(TTSService, QUIET, backend="pocket", pocket_config=str(tiny_model),
                               pocket_voices=str(tiny_model.parent / "voices"),
                               pocket_max_seconds=CAP) as server:
        yield server


async def test_loads_and_lists_file_voices(pocket):
    backend = pocket.service.backend
    assert backend.voices() == ["tone"]
    assert backend.sample_rate == 24000
    mapped = {n: t for n, t in pocket.service.voicebook.mapping.items()}
    assert set(mapped.values()) == {"tone"}  # OpenAI names fall back to the one voice there is


async def test_speech_streams_frames_within_the_cap(pocket):
    text = "Hello there, this is a tiny model. The quick brown fox jumps over the lazy dog."
    async with client_for(pocket) as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm", stream_format="audio",
        ) as resp:
            chunks = [c async for c in resp.iter_bytes()]
    audio = b"".join(chunks)
    samples, rate = decode(audio, "pcm")
    assert samples.size > 0 and abs(samples).max() > 0
    # Two sentences, each cut at the cap if the model never ends.
    assert samples.size <= 2 * CAP * rate
    assert "tone" in pocket.service.backend._states  # the voice prompt became a reusable state


async def test_sse_and_whole_wav(pocket):
    async with client_for(pocket) as client:
        async with client.audio.speech.with_streaming_response.create(
            model="pocket", voice="tone", input="Pack my box.", response_format="opus", stream_format="sse",
        ) as resp:
            body = (await resp.read()).decode()
        whole = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="tone", input="Pack my box.",
                                                 response_format="wav")
    events = [json.loads(b.removeprefix("data: ")) for b in body.split("\n\n") if b.strip()]
    assert events[-1]["type"] == "speech.audio.done"
    opus = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert decode(opus, "opus")[0].size > 0
    samples, rate = decode(whole.content, "wav")
    assert 0 < samples.size <= CAP * rate


def _backend(**settings):
    from nexusd.services.tts.backends.pocket import PocketBackend

    return PocketBackend(TTSSettings(backend="pocket", **settings))


def test_no_download_without_permission(tiny_model):
    config = yaml.safe_load(tiny_model.read_text())
    config["weights_path"] = "hf://kyutai/not-in-this-cache/model.safetensors"
    path = tiny_model.parent / "hub.yaml"  # next to the tokenizer its relative path names
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache"):
        _backend(pocket_config=str(path), pocket_voices=str(tiny_model.parent / "voices")).load()
    config["weights_path"] = "https://example.invalid/model.safetensors"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="downloads are off"):
        _backend(pocket_config=str(path)).load()


def test_missing_files_and_voices_are_config_errors(tiny_model, tmp_path):
    config = yaml.safe_load(tiny_model.read_text())
    config["weights_path"] = "missing.safetensors"
    (tiny_model.parent / "missing.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="missing.safetensors does not exist"):
        _backend(pocket_config=str(tiny_model.parent / "missing.yaml")).load()
    with pytest.raises(ConfigError, match="pocket has no voice"):
        _backend(pocket_config=str(tiny_model), pocket_voices=str(tmp_path)).load()
