"""Uploaded audio to 16 kHz mono float32 with PyAV (FFmpeg's demuxers and decoders), so any
container OpenAI accepts (flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm) works, whatever the
file's name says. Runs in a worker thread: decoding a long file takes a while."""

from __future__ import annotations

from typing import IO

import av
import numpy as np

from nexusd.runtime import ApiError

SAMPLE_RATE = 16000  # what both recognizers take


class AudioTooLong(Exception):
    pass


def decode(data: IO[bytes], filename: str, max_seconds: float) -> np.ndarray:
    """float32 samples in [-1, 1] at 16 kHz; ApiError 400 when the file is not audio or longer
    than `max_seconds` (checked while decoding, so a huge file stops early)."""
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(data, mode="r") as container:
            if not container.streams.audio:
                raise _undecodable(filename, "it has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    total += out.samples
                    if total > limit:
                        raise ApiError(400, f"Audio file {filename!r} is longer than {max_seconds:g} s",
                                       param="file", code="audio_too_long")
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except ApiError:
        raise
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise _undecodable(filename, getattr(exc, "strerror", None) or str(exc)) from None
    if not chunks:
        raise _undecodable(filename, "it holds no audio samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    return np.clip(samples, -1.0, 1.0, out=samples)


def _undecodable(filename: str, why: str) -> ApiError:
    return ApiError(400, f"Could not decode the audio file {filename!r}: {why}. Supported formats: "
                         "flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm", param="file",
                    code="invalid_audio")
