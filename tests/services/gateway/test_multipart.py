"""The gateway's multipart scan (multipart.py): the routing fields are found wherever they sit,
a file cannot pose as a field, and a broken form is a 400. Bodies are built by aiohttp's own
multipart writer, as a client would send them."""

from __future__ import annotations

import io

import aiohttp
import pytest

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway import multipart
from nexusd.services.gateway.multipart import boundary_of, scan_fields

WANTED = frozenset({"model", "stream"})


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


async def encode(*parts: tuple[str, bytes | str, str | None]) -> tuple[bytes, bytes]:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value, filename in parts:
        form.add_field(name, value, filename=filename)
    writer = form()
    sink = _Sink()
    await writer.write(sink)
    return bytes(sink.data), boundary_of(writer.content_type)


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
async def test_model_after_a_file_that_pretends_to_be_a_field(monkeypatch, chunk):
    monkeypatch.setattr(multipart, "SCAN_CHUNK", chunk)
    fake = b'Content-Disposition: form-data; name="model"\r\n\r\nstolen\r\n' * 50
    body, boundary = await encode(("file", fake, "a.wav"), ("stream", "true", None), ("model", "whisper-1", None))
    assert scan_fields(io.BytesIO(body), boundary, WANTED) == {"model": "whisper-1", "stream": "true"}


async def test_model_first_and_missing():
    body, boundary = await encode(("model", "pocketsphinx", None), ("file", b"\0" * 1000, "a.wav"))
    assert scan_fields(io.BytesIO(body), boundary, WANTED) == {"model": "pocketsphinx"}
    body, boundary = await encode(("file", b"\0" * 1000, "a.wav"))
    assert scan_fields(io.BytesIO(body), boundary, WANTED) == {}


async def test_broken_forms_are_400():
    body, boundary = await encode(("file", b"\0" * 100, "a.wav"), ("model", "m" * 5000, None))
    with pytest.raises(ApiError) as err:
        scan_fields(io.BytesIO(body), boundary, WANTED)
    assert err.value.status == 400 and err.value.param == "model"
    body, boundary = await encode(("model", "a", None), ("model", "b", None))
    with pytest.raises(ApiError, match="more than once"):
        scan_fields(io.BytesIO(body), boundary, WANTED)
    body, boundary = await encode(("file", b"\0" * 100, "a.wav"), ("model", "x", None))
    cut = body.index(b"\0" * 100) + 50  # the body ends inside the file
    with pytest.raises(ApiError, match="no closing boundary"):
        scan_fields(io.BytesIO(body[:cut]), boundary, WANTED)
    with pytest.raises(ApiError, match="boundary"):
        boundary_of("multipart/form-data")
