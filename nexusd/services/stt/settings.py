"""`NEXUS_STT_*` settings, read once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nexusd.runtime import ServiceSettings
from nexusd.runtime.settings import service_config

MIB = 1 << 20
# Room for the form's other fields and the multipart framing around the file.
FORM_OVERHEAD = 64 * 1024


class STTSettings(ServiceSettings):
    model_config = service_config("stt")

    port: int = Field(9950, ge=0, le=65535, description="Port to bind (0 = any free port)")
    start_timeout: float = Field(120, gt=0, description="Seconds to load the model; also TimeoutStartSec=")
    backend: Literal["pocketsphinx", "whisper"] = Field(
        "pocketsphinx", description="Recognizer: pocketsphinx (extra stt, US English model in the wheel), "
                                    "whisper (extra whisper: faster-whisper, CUDA when present)")
    model: str = Field("", description="whisper: a local CTranslate2 Whisper model directory (with tokenizer.json); "
                                       "pocketsphinx: leave empty (it uses the model its wheel ships)")
    max_upload: int = Field(25 * MIB, gt=0, le=2048 * MIB,
                            description="Largest audio file accepted, bytes (OpenAI's 25 MiB); above it 413")
    max_seconds: float = Field(3600, gt=0, description="Longest audio accepted, seconds; above it 400")
    max_inflight: int = Field(1, ge=1, le=64,
                              description="Transcriptions run at once (each holds one worker thread)")
    max_queue: int = Field(8, ge=0, le=4096, description="Requests waiting beyond max_inflight before 429")
    whisper_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="whisper: auto = CUDA when CTranslate2 sees a GPU, else CPU")
    whisper_compute_type: str = Field(
        "default", pattern=r"^[a-z0-9_]+$", description="whisper: CTranslate2 compute type (default, int8, float16, ...)")
    whisper_threads: int = Field(0, ge=0, le=256, description="whisper: CPU threads per transcription (0 = CTranslate2's default)")
    whisper_beam_size: int = Field(5, ge=1, le=16, description="whisper: beam size")
    whisper_vad: Literal["auto", "on", "off"] = Field(
        "auto", description="whisper: Silero VAD filter; auto = on when onnxruntime is installed")
    whisper_allow_download: bool = Field(
        False, description="whisper: let NEXUS_STT_MODEL be a model name fetched from Hugging Face (off: local only)")

    @property
    def body_limit(self) -> int:
        """The multipart body bound of the audio routes: the file plus its form."""
        return self.max_upload + FORM_OVERHEAD
