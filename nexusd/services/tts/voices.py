"""Voices: OpenAI's names mapped to the backend's own, and the backend's names as they are."""

from __future__ import annotations

from typing import Any

from nexusd.runtime import ApiError
from nexusd.runtime.settings import ConfigError
from nexusd.services.tts.backends import Backend

# OpenAI's built-in voices (API reference, audio/speech `voice`).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                 "shimmer", "verse", "marin", "cedar")


class VoiceBook:
    def __init__(self, backend: Backend, overrides: dict[str, str]) -> None:
        self.backend = backend
        unknown = [name for name in overrides if name not in OPENAI_VOICES]
        if unknown:
            raise ConfigError(f"NEXUS_TTS_VOICE_MAP: {', '.join(unknown)} are not OpenAI voice names "
                              f"({', '.join(OPENAI_VOICES)}); backend voices need no mapping")
        missing = {n: v for n, v in overrides.items() if not backend.has_voice(v)}
        if missing:
            raise ConfigError(f"NEXUS_TTS_VOICE_MAP: the {backend.name} backend has no voice "
                              + ", ".join(f"{v!r} (for {n})" for n, v in missing.items()))
        native = backend.voices()
        fallback = native[0] if native else ""
        self.mapping: dict[str, str] = {}
        for name in OPENAI_VOICES:
            target = overrides.get(name) or backend.default_voice_map.get(name, "")
            # A default that this installation lacks (a pocket voice not in the local cache)
            # falls back to the first voice the backend has, so every OpenAI name still works.
            self.mapping[name] = target if target and backend.has_voice(target) else fallback

    def resolve(self, voice: str) -> str:
        """The backend voice for a request's `voice`; 400 when neither OpenAI's nor native."""
        key = voice.strip()
        if key.lower() in self.mapping and self.mapping[key.lower()]:
            return self.mapping[key.lower()]
        if key and self.backend.has_voice(key):
            return key
        raise ApiError(400, f"Unknown voice {voice!r}: use one of {', '.join(OPENAI_VOICES)} or a "
                            f"{self.backend.name} voice from GET /v1/audio/voices",
                       param="voice", code="invalid_value")

    def listing(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = [
            {"id": name, "object": "voice", "kind": "openai", "backend_voice": target}
            for name, target in self.mapping.items() if target
        ]
        names: dict[str, str] = getattr(self.backend, "voice_names", dict)()
        for voice in self.backend.voices():
            item: dict[str, Any] = {"id": voice, "object": "voice", "kind": "native"}
            if voice in names:
                item["name"] = names[voice]
            items.append(item)
        return items
