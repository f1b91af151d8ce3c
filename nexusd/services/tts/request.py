"""The body of POST /v1/audio/speech, as OpenAI's `CreateSpeechRequest`, with its bounds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_INPUT_CHARS = 4096  # OpenAI's limit on `input`
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class SpeechRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI's API does for forward compatibility.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=256)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    # A name, or OpenAI's custom-voice object {"id": "..."}.
    voice: str = Field(min_length=1, max_length=256)
    instructions: str | None = Field(None, max_length=MAX_INPUT_CHARS)  # accepted, not used
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    # None: one complete response with Content-Length (exact WAV/FLAC headers).
    # "audio": chunked transfer while audio is produced. "sse": speech.audio.delta events.
    stream_format: Literal["audio", "sse"] | None = None

    @field_validator("input")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must contain text to speak")
        return value

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_object(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]
        return value


def request_options() -> dict[str, Any]:
    """For /v1/metadata `options`: what a caller may pass."""
    return {
        "model": {"type": "string", "enum_hint": list(OPENAI_MODELS)},
        "input": {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS},
        "voice": {"type": "string", "description": "OpenAI voice name or a backend voice (GET /v1/audio/voices)"},
        "response_format": {"enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"], "default": "mp3"},
        "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
        "stream_format": {"enum": ["audio", "sse"], "description": "omit for one complete response"},
        "instructions": {"type": "string", "maxLength": MAX_INPUT_CHARS, "description": "accepted, ignored"},
    }
