"""Long inputs go sentence by sentence: the first audio leaves before the text is done, and a
client that goes away stops the work at the next sentence and frees the worker."""

from __future__ import annotations

import asyncio
import json

import pytest

from nexusd.services.tts.sentences import split_sentences
from tests.helpers.net import async_wait_for
from tests.services.tts.conftest import client_for, duration, metric, rms

LONG = " ".join(f"This is sentence number {i}, spoken on its own." for i in range(1, 61))
SENTENCES = len(split_sentences(LONG))
SENTENCES_DONE = "nexus_tts_sentences_total"


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_first_chunk_before_synthesis_ends(espeak, stream_format):
    assert SENTENCES == 60
    async with client_for(espeak) as client:
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG, response_format="pcm", stream_format=stream_format,
        ) as resp:
            chunks = resp.iter_bytes()
            first = await anext(chunks)
            # The first audio is in our hands while most sentences are still to be spoken.
            done_at_first_chunk = metric(espeak, SENTENCES_DONE, backend="espeak")
            rest = b"".join([c async for c in chunks])
    assert first
    assert done_at_first_chunk < SENTENCES / 2
    assert metric(espeak, SENTENCES_DONE, backend="espeak") == SENTENCES
    if stream_format == "audio":
        assert rms(first + rest, "pcm") > 0.01


async def _open_and_abandon(server, body: dict, read_first: bool) -> None:
    """Send a speech request on a raw connection, maybe read the first bytes, then hang up."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    await writer.drain()
    if read_first:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert b" 200 " in head.split(b"\r\n")[0]
        assert await asyncio.wait_for(reader.read(1024), 30)
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("stream_format", ["audio", None])
async def test_client_gone_stops_synthesis_and_frees_worker(espeak, stream_format):
    body = {"model": "tts-1", "voice": "alloy", "input": LONG, "response_format": "mp3"}
    if stream_format:
        body["stream_format"] = stream_format
    await _open_and_abandon(espeak, body, read_first=stream_format is not None)

    async def cancelled() -> bool:
        return metric(espeak, "nexus_tts_cancelled_requests_total", backend="espeak") == 1

    await async_wait_for(cancelled, timeout=60, what="the request to be cancelled")
    assert metric(espeak, SENTENCES_DONE, backend="espeak") < SENTENCES
    # The worker is free: a new request completes.
    async with client_for(espeak) as client:
        resp = await client.audio.speech.create(model="tts-1", voice="echo", input="Still here.",
                                                response_format="wav")
        assert rms(resp.content, "wav") > 0.01


async def test_concurrent_requests_interleave_without_mixing(espeak):
    """Two long requests share the one worker sentence by sentence; each gets its own stream."""

    async def one(fmt: str, voice: str) -> bytes:
        async with client_for(espeak) as client:
            async with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice=voice, input=LONG[:1500], response_format=fmt, stream_format="audio",
            ) as resp:
                return await resp.read()

    alone = await one("wav", "alloy")
    wav, flac = await asyncio.gather(one("wav", "alloy"), one("flac", "alloy"))
    # eSpeak varies by a few samples from call to call, so compare durations, not bytes.
    assert abs(duration(wav, "wav") - duration(alone, "wav")) < 0.02 * duration(alone, "wav")
    assert wav.count(b"RIFF") == 1 and b"fLaC" not in wav  # nothing of the other stream in it
    assert abs(duration(flac, "flac") - duration(alone, "wav")) < 0.02 * duration(alone, "wav")
    assert rms(flac, "flac") > 0.01
