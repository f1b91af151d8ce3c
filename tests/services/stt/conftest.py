from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
from openai import AsyncOpenAI

from nexusd.runtime.settings import SharedSettings
from nexusd.services.stt import STTService
from nexusd.services.tts import TTSService
from tests.helpers.net import async_wait_for
from tests.runtime.support import serve_inprocess
from tests.services.gateway.harness import make_keys, routable, serve_gateway

QUIET = SharedSettings(access_log=False, etcd_endpoints="")
DIGITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def client_for(url: str, key: str = "unused") -> AsyncOpenAI:
    # max_retries=0: an error must reach the test, not be retried away.
    return AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """float32 mono samples as a 16-bit WAV file, written with PyAV."""
    out = io.BytesIO()
    with av.open(out, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def metric(server, name: str, **labels: str) -> float:
    value = server.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
async def pocketsphinx() -> AsyncIterator:
    """The stt service with its embedded default backend, in process, on a free port."""
    pytest.importorskip("pocketsphinx")
    async with serve_inprocess(STTService, QUIET, backend="pocketsphinx") as server:
        yield server


@pytest.fixture
async def espeak() -> AsyncIterator:
    async with serve_inprocess(TTSService, QUIET, backend="espeak") as server:
        yield server


@contextlib.asynccontextmanager
async def gateway_for(tmp_path, backends: dict[str, str]) -> AsyncIterator[tuple]:
    """A real gateway in front of `backends`, with one API key; yields (gateway, key)."""
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    async with serve_gateway(tmp_path / "keys", backends, shared=QUIET) as gw:
        async def ready() -> bool:
            return routable(gw, "audio.transcriptions")
        await async_wait_for(ready, timeout=20, what="stt routable through the gateway")
        yield gw, key
