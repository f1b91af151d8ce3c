"""Bad uploads straight to the stt service: the OpenAI envelope with the right status and
`param`, no traceback, no temporary file left, and the service keeps serving."""

from __future__ import annotations

import tempfile

import aiohttp
import numpy as np
import pytest

from nexusd.services.stt import STTService
from tests.runtime.support import serve_inprocess
from tests.services.stt.conftest import QUIET, wav

SILENCE = wav(np.zeros(4000, dtype=np.float32))


def form(*fields: tuple[str, object]) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields:
        if name == "file":
            data.add_field("file", value, filename="a.wav", content_type="audio/wav")
        else:
            data.add_field(name, value)
    return data


@pytest.mark.parametrize("fields, status, param, code", [
    ([("model", "whisper-1")], 400, "file", "missing_required_parameter"),
    ([("file", b"\x00\x01garbage" * 100)], 400, "file", "invalid_audio"),
    ([("file", SILENCE), ("model", "gpt-9")], 404, "model", "model_not_found"),
    ([("file", SILENCE), ("response_format", "docx")], 400, "response_format", "invalid_value"),
    ([("file", SILENCE), ("temperature", "hot")], 400, "temperature", "invalid_value"),
    ([("file", SILENCE), ("language", "fr")], 400, "language", "unsupported_language"),
    ([("file", SILENCE), ("timestamp_granularities[]", "word")], 400, "timestamp_granularities[]", "invalid_value"),
    ([("file", SILENCE), ("stream", "true"), ("response_format", "srt")], 400, "stream", "invalid_value"),
    ([("file", SILENCE), ("voice", "alloy")], 400, "voice", "unknown_parameter"),
    ([("file", SILENCE), ("chunking_strategy", "auto")], 400, "chunking_strategy", "unsupported_parameter"),
    ([("file", SILENCE), ("file", SILENCE)], 400, "file", "invalid_value"),
])
async def test_bad_transcription_requests(pocketsphinx, fields, status, param, code):
    async with aiohttp.ClientSession() as s:
        async with s.post(pocketsphinx.url + "/v1/audio/transcriptions", data=form(*fields)) as r:
            body = await r.json()
        assert (r.status, body["error"]["param"], body["error"]["code"]) == (status, param, code), body
        assert "Traceback" not in body["error"]["message"]
        async with s.post(pocketsphinx.url + "/v1/audio/transcriptions", data=form(("file", SILENCE))) as r:
            assert r.status == 200 and (await r.json())["text"] == ""  # still serving


async def test_not_multipart_and_too_large(pocketsphinx):
    async with aiohttp.ClientSession() as s:
        async with s.post(pocketsphinx.url + "/v1/audio/transcriptions", json={"model": "whisper-1"}) as r:
            assert r.status == 415
        async with s.post(pocketsphinx.url + "/v1/audio/translations", data=form(("file", SILENCE))) as r:
            body = await r.json()
            assert r.status == 400 and "does not translate" in body["error"]["message"]


async def test_upload_bound_and_duration_cap(tmp_path, monkeypatch):
    pytest.importorskip("pocketsphinx")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the spool would go
    async with serve_inprocess(STTService, QUIET, backend="pocketsphinx", max_upload=3 << 20,
                               max_seconds=30) as server:
        async with aiohttp.ClientSession() as s:
            # Chunked (no Content-Length): the bound is counted while the file streams in.
            async def chunks():
                yield b"RIFF" + b"\0" * (1 << 20)
                for _ in range(3):
                    yield b"\0" * (1 << 20)
            data = aiohttp.FormData()
            data.add_field("file", chunks(), filename="big.wav", content_type="audio/wav")
            async with s.post(server.url + "/v1/audio/transcriptions", data=data) as r:
                assert r.status == 413 and (await r.json())["error"]["param"] == "file"
            long_silence = wav(np.zeros(16000 * 45, dtype=np.float32))  # 1.4 MiB: spooled to disk
            async with s.post(server.url + "/v1/audio/transcriptions", data=form(("file", long_silence))) as r:
                body = await r.json()
                assert r.status == 400 and body["error"]["code"] == "audio_too_long", body
    assert list(tmp_path.iterdir()) == []  # the spool was an anonymous file, now closed
