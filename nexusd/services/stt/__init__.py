"""Speech to text: OpenAI's /v1/audio/transcriptions and /translations over PocketSphinx or
faster-whisper (docs/stt.md)."""

from nexusd.services.stt.service import STTService

__all__ = ["STTService"]
