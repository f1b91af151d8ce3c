"""TTS backends. Each one turns a sentence into float32 mono samples, in a worker thread.

A backend is loaded once (in the service's worker thread, never on the event loop) and then
only called from that same single worker: none of the engines is safe to call concurrently
(eSpeak NG keeps global state; pocket-tts says its generation is not thread-safe).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from nexusd.services.tts.settings import TTSSettings

BACKENDS = {
    "espeak": "nexusd.services.tts.backends.espeak:EspeakBackend",
    "piper": "nexusd.services.tts.backends.piper:PiperBackend",
    "pocket": "nexusd.services.tts.backends.pocket:PocketBackend",
}


class Backend(ABC):
    name: ClassVar[str] = "backend"
    # The part of OpenAI's 0.25..4.0 `speed` the engine applies itself; the rest is a
    # pitch-preserving tempo change in the encoder.
    speed_range: ClassVar[tuple[float, float]] = (1.0, 1.0)
    # OpenAI voice name -> native voice, before NEXUS_TTS_VOICE_MAP overrides.
    default_voice_map: ClassVar[dict[str, str]] = {}

    sample_rate: int = 24000

    def __init__(self, settings: TTSSettings) -> None:
        self.settings = settings

    def load(self) -> None:
        """Load the engine (blocking; runs in the worker)."""

    def voices(self) -> list[str]:
        """Native voice names, for the listing."""
        return []

    def has_voice(self, voice: str) -> bool:
        return voice in self.voices()

    def describe(self) -> str:
        return self.name

    @abstractmethod
    def synthesize(self, text: str, voice: str, speed: float,
                   stop: threading.Event) -> Iterator[np.ndarray]:
        """Yield float32 samples in [-1, 1] at `sample_rate` for one sentence; return early
        once `stop` is set."""
        ...


def load_backend_class(name: str) -> type[Backend]:
    import importlib

    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
