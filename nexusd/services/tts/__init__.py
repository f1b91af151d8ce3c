"""Text to speech: OpenAI's /v1/audio/speech over eSpeak NG, Piper or Pocket TTS (docs/tts.md)."""

from nexusd.services.tts.service import TTSService

__all__ = ["TTSService"]
