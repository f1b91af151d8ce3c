"""Audio encoding with PyAV for OpenAI's six response formats, incrementally.

An `AudioEncoder` takes float32 mono chunks at the backend's sample rate and returns encoded
bytes as soon as the container has them. OpenAI's speech output is 24 kHz mono in every
format, so everything is resampled to 24 kHz, except Opus, which only runs at 48 kHz (and
OpenAI's `opus` is Ogg Opus). `pcm` is raw s16le mono at 24 kHz with no container.

Two modes:
- streamed (chunked transfer, SSE): the muxer writes into a non-seekable sink, so it cannot
  patch headers afterwards: WAV then carries the usual unknown-length header (0xFFFFFFFF
  sizes, as ffmpeg writes to a pipe) and FLAC a STREAMINFO without a sample count.
- whole: the muxer writes into a seekable buffer and patches the headers at the end, so WAV has
  exact RIFF/data sizes and FLAC its sample count; bytes come out only from `finish()`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.filter
import numpy as np

OUTPUT_RATE = 24000


@dataclass(frozen=True)
class Format:
    container: str | None  # None = raw samples, no container
    codec: str
    rate: int
    content_type: str
    options: tuple[tuple[str, str], ...] = ()


FORMATS: dict[str, Format] = {
    "mp3": Format("mp3", "libmp3lame", OUTPUT_RATE, "audio/mpeg"),
    # page_duration: the Ogg muxer otherwise holds a whole second of pages before writing,
    # which would delay the first streamed byte (libavformat oggenc, default 1 s).
    "opus": Format("ogg", "libopus", 48000, "audio/ogg", (("page_duration", "100000"),)),
    "aac": Format("adts", "aac", OUTPUT_RATE, "audio/aac"),
    "flac": Format("flac", "flac", OUTPUT_RATE, "audio/flac"),
    "wav": Format("wav", "pcm_s16le", OUTPUT_RATE, "audio/wav"),
    "pcm": Format(None, "pcm_s16le", OUTPUT_RATE, "audio/pcm"),
}


class _Sink:
    """A write-only file for the muxer: no seek, so headers are written as for a pipe."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class _Tempo:
    """Speed change without a pitch change (ffmpeg's atempo), for the part of `speed` a
    backend cannot apply itself. atempo takes 0.5..100 per instance, so lower factors chain."""

    def __init__(self, factor: float, rate: int) -> None:
        self.graph = av.filter.Graph()
        node = self.graph.add_abuffer(format="flt", sample_rate=rate, layout="mono",
                                      time_base=Fraction(1, rate))
        self.source = node
        factors = []
        while factor < 0.5:
            factors.append(0.5)
            factor /= 0.5
        factors.append(factor)
        for f in factors:
            nxt = self.graph.add("atempo", f"{f:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self.graph.add("abuffersink")
        node.link_to(sink)
        self.sink = sink
        self.graph.configure()

    def process(self, frame: av.AudioFrame | None) -> list[Any]:
        self.source.push(frame)
        frames: list[Any] = []
        while True:
            try:
                frames.append(self.sink.pull())
            except (av.BlockingIOError, av.EOFError):
                return frames


class AudioEncoder:
    """Float32 mono chunks in, encoded bytes out. Not thread-safe: one per request, used by
    one worker at a time."""

    def __init__(self, fmt: str, in_rate: int, *, streamed: bool, tempo: float = 1.0) -> None:
        self.format = FORMATS[fmt]
        self.in_rate = in_rate
        self.streamed = streamed
        self.samples_out = 0  # at the output rate
        self._pts = 0
        self._tempo = _Tempo(tempo, in_rate) if abs(tempo - 1.0) > 1e-3 else None
        spec = self.format
        self._sink: _Sink | io.BytesIO = _Sink() if streamed else io.BytesIO()
        self._container: Any = None
        self._stream: Any = None
        if spec.container is None:
            sample_format = "s16"
        else:
            self._container = av.open(self._sink, "w", format=spec.container,
                                      options={"fflags": "+bitexact", **dict(spec.options)})
            self._stream = self._container.add_stream(spec.codec, rate=spec.rate, layout="mono")
            sample_format = self._stream.codec_context.codec.audio_formats[0].name
        self._resampler = av.AudioResampler(format=sample_format, layout="mono", rate=spec.rate)
        self._closed = False

    @property
    def seconds(self) -> float:
        return self.samples_out / self.format.rate

    def encode(self, samples: np.ndarray) -> bytes:
        """Feed float32 samples in [-1, 1]; returns what is ready (streamed mode)."""
        if samples.size == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        self._pts += samples.size
        return self._feed(frame)

    def finish(self) -> bytes:
        """Flush the filters and the codec, write the trailer; returns the remaining bytes
        (everything, in whole mode)."""
        out = self._feed(None)
        if self._stream is not None and self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        self._closed = True
        if isinstance(self._sink, io.BytesIO):
            return self._sink.getvalue()
        return out + self._sink.take()

    def close(self) -> None:
        """Release the codec without finishing (the request was cancelled)."""
        if not self._closed and self._container is not None:
            self._container.close()
        self._closed = True

    def _feed(self, frame: av.AudioFrame | None) -> bytes:
        frames: list[Any] = [frame]
        if self._tempo is not None:
            frames = self._tempo.process(frame)
            if frame is None:
                frames.append(None)
        raw = bytearray()
        for f in frames:
            for resampled in self._resampler.resample(f):
                self.samples_out += resampled.samples
                if self._stream is None:
                    raw += resampled.to_ndarray().tobytes()
                else:
                    for packet in self._stream.encode(resampled):
                        self._container.mux(packet)
        if self._stream is None:  # pcm: no container
            if self.streamed:
                return bytes(raw)
            assert isinstance(self._sink, io.BytesIO)
            self._sink.write(raw)
            return b""
        return self._sink.take() if isinstance(self._sink, _Sink) else b""


def content_type(fmt: str) -> str:
    return FORMATS[fmt].content_type
