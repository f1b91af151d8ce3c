"""The PyAV encoders on a known signal: rates, durations, incremental output, tempo."""

from __future__ import annotations

import numpy as np
import pytest

from nexusd.services.tts.audio import FORMATS, AudioEncoder
from tests.services.tts.conftest import decode

RATE = 22050
TONE = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE)).astype(np.float32)


def encode(fmt: str, *, streamed: bool, tempo: float = 1.0) -> tuple[bytes, list[int]]:
    encoder = AudioEncoder(fmt, RATE, streamed=streamed, tempo=tempo)
    pieces = [encoder.encode(TONE[i:i + RATE // 2]) for i in range(0, TONE.size, RATE // 2)]
    return b"".join(pieces) + encoder.finish(), [len(p) for p in pieces]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_formats_keep_the_signal(fmt):
    for streamed in (False, True):
        data, pieces = encode(fmt, streamed=streamed)
        samples, rate = decode(data, fmt)
        assert rate == (48000 if fmt == "opus" else 24000)
        assert abs(samples.size / rate - 2.0) < 0.07  # codec padding (AAC priming) aside
        assert 0.3 < np.sqrt(np.mean(samples ** 2)) < 0.4  # a 0.5 sine has RMS 0.354
        if streamed:
            assert all(n > 0 for n in pieces[1:]), pieces  # bytes come out as audio goes in
        else:
            assert pieces == [0, 0, 0, 0]  # a whole response only has bytes at the end


@pytest.mark.parametrize("tempo", [0.25, 0.5, 2.0, 4.0])
def test_tempo_changes_duration_not_rate(tempo):
    data, _ = encode("pcm", streamed=True, tempo=tempo)
    seconds = len(data) / 2 / 24000
    assert abs(seconds - 2.0 / tempo) / (2.0 / tempo) < 0.05
