"""STT backends. Each one turns 16 kHz mono float32 samples into timed segments, in a worker
thread, stopping early once asked to.

A backend is loaded once, in a worker thread (never on the event loop). PocketSphinx's decoder
keeps per-utterance state, so that backend serves one request at a time (the service gives it
one worker); faster-whisper may be called from several threads.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from nexusd.services.stt.settings import STTSettings

BACKENDS = {
    "pocketsphinx": "nexusd.services.stt.backends.pocketsphinx:PocketsphinxBackend",
    "whisper": "nexusd.services.stt.backends.whisper:WhisperBackend",
}


@dataclass
class Word:
    word: str
    start: float
    end: float


@dataclass
class Segment:
    """One stretch of speech, with what OpenAI's verbose_json reports about it."""

    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class Job:
    """What one request asks of the backend."""

    task: str  # "transcribe" or "translate"
    language: str | None
    prompt: str | None
    temperature: float
    words: bool  # word timestamps wanted


class Progress:
    """Seconds of audio the recognizer has consumed: written by the worker, read by the loop
    (a float assignment is atomic under the GIL)."""

    seconds: float = 0.0


class Backend(ABC):
    name: ClassVar[str] = "backend"
    translates: ClassVar[bool] = False
    workers: ClassVar[int] = 1  # threads that may call transcribe() at once

    def __init__(self, settings: STTSettings) -> None:
        self.settings = settings

    def load(self) -> None:
        """Load the model (blocking; runs in a worker)."""

    def languages(self) -> list[str] | None:
        """ISO-639-1 codes this backend recognizes; None = any the model knows."""
        return None

    def describe(self) -> str:
        return self.name

    @abstractmethod
    def transcribe(self, samples: np.ndarray, job: Job, stop: threading.Event,
                   progress: Progress) -> Iterator[Segment]:
        """Yield segments in order, as they are recognized; return early once `stop` is set.
        Keep `progress.seconds` at the audio consumed so far."""
        ...


def load_backend_class(name: str) -> type[Backend]:
    import importlib

    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
