"""POST /v1/audio/speech through the official openai client, on the real engines (eSpeak NG;
Piper where its wheel installs), decoded back with PyAV."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from tests.services.tts.conftest import client_for, decode, duration, rms

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park, and everyone smiled."
WORDS = len(TEXT.split())
RATES = {"mp3": 24000, "opus": 48000, "aac": 24000, "flac": 24000, "wav": 24000, "pcm": 24000}


def plausible(seconds: float, words: int = WORDS) -> bool:
    # Conversational speech runs 2-4 words a second; allow pauses and slow voices.
    return words / 6 < seconds < words / 1


async def speak(server, *, stream_format: str | None = None, **params) -> tuple[bytes, dict]:
    params = {"model": "tts-1", "voice": "alloy", "input": TEXT, **params}
    async with client_for(server) as client:
        extra = {"stream_format": stream_format} if stream_format else {}
        async with client.audio.speech.with_streaming_response.create(**params, **extra) as resp:
            return await resp.read(), dict(resp.headers)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_format_decodes_to_speech(any_backend, fmt):
    whole, headers = await speak(any_backend, response_format=fmt)
    assert int(headers["content-length"]) == len(whole)
    streamed, sheaders = await speak(any_backend, response_format=fmt, stream_format="audio")
    assert sheaders.get("transfer-encoding") == "chunked"
    for data in (whole, streamed):
        samples, rate = decode(data, fmt)
        assert rate == RATES[fmt]
        assert plausible(samples.size / rate), samples.size / rate
        assert rms(data, fmt) > 0.01  # speech, not silence


async def test_wav_header_sizes(espeak):
    whole, _ = await speak(espeak, response_format="wav")
    riff, data_size = struct.unpack("<I", whole[4:8])[0], struct.unpack("<I", whole[40:44])[0]
    assert whole[36:40] == b"data"
    assert riff == len(whole) - 8 and data_size == len(whole) - 44
    streamed, _ = await speak(espeak, response_format="wav", stream_format="audio")
    # Streamed: the length is unknown when the header goes out (as ffmpeg writes to a pipe).
    assert struct.unpack("<I", streamed[4:8])[0] == 0xFFFFFFFF
    assert abs(duration(streamed, "wav") - duration(whole, "wav")) < 0.05


async def test_speed_changes_duration(any_backend):
    normal = duration((await speak(any_backend, response_format="wav"))[0], "wav")
    fast = duration((await speak(any_backend, response_format="wav", speed=2.0))[0], "wav")
    slow = duration((await speak(any_backend, response_format="wav", speed=0.25))[0], "wav")
    assert fast < 0.7 * normal
    assert slow > 2.5 * normal  # below the engine's own range the encoder's tempo change applies


async def test_native_voices_and_variants(espeak):
    for voice in ("en-gb", "en-us+m3", "gmw/en-US", "fr"):
        data, _ = await speak(espeak, voice=voice, response_format="flac")
        assert rms(data, "flac") > 0.01, voice


async def test_sse_events(any_backend):
    body, headers = await speak(any_backend, response_format="mp3", stream_format="sse")
    assert headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in body.decode().split("\n\n") if b.strip()]
    events = []
    for block in blocks:
        assert block.startswith("data: "), block[:80]
        events.append(json.loads(block[len("data: "):]))
    *deltas, done = events
    assert deltas and all(e["type"] == "speech.audio.delta" and set(e) == {"type", "audio"} for e in deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert plausible(duration(audio, "mp3")) and rms(audio, "mp3") > 0.01
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(TEXT)
    assert usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_model_names(espeak):
    for model in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "espeak"):
        data, _ = await speak(espeak, model=model, input="Hi there.", response_format="pcm")
        assert rms(data, "pcm") > 0.01, model
    async with client_for(espeak) as client:
        # No model: the default_for model answers (docs/service-contract.md).
        resp = await client.post("/audio/speech", body={"input": "Hello.", "voice": "nova"},
                                 cast_to=bytes)
        assert len(resp) > 100
