"""Whisper through faster-whisper (CTranslate2): CUDA when CTranslate2 sees a GPU, else CPU.

The model is a local CTranslate2 Whisper directory (`NEXUS_STT_MODEL`: model.bin, config.json,
vocabulary, tokenizer.json), as `ct2-transformers-converter --copy_files tokenizer.json` writes
it. Nothing is fetched from a model hub unless NEXUS_STT_WHISPER_ALLOW_DOWNLOAD=true (then
NEXUS_STT_MODEL may also be a name such as `small`, fetched into the Hugging Face cache).
faster-whisper fetches a tokenizer from the hub when the directory has none, so a directory
without tokenizer.json is refused at start instead.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterator

import numpy as np

from nexusd.runtime.settings import ConfigError
from nexusd.services.stt.audio import SAMPLE_RATE
from nexusd.services.stt.backends import Backend, Job, Progress, Segment, Word


class WhisperBackend(Backend):
    name = "whisper"
    translates = True
    workers = 1  # one transcription at a time per model; CTranslate2 uses every core for it

    def load(self) -> None:
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError:
            raise ConfigError("NEXUS_STT_BACKEND=whisper needs faster-whisper: pip install 'nexusd[whisper]'") from None
        s = self.settings
        path = s.model
        if not path:
            raise ConfigError("NEXUS_STT_MODEL: the whisper backend needs a CTranslate2 Whisper model directory")
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "tokenizer.json")) and not s.whisper_allow_download:
                raise ConfigError(f"NEXUS_STT_MODEL: {path} has no tokenizer.json (faster-whisper would fetch "
                                  "one from Hugging Face); convert with --copy_files tokenizer.json")
        elif not s.whisper_allow_download:
            raise ConfigError(f"NEXUS_STT_MODEL: {path} is not a directory (set NEXUS_STT_WHISPER_ALLOW_DOWNLOAD=true "
                              "to fetch a model by name)")
        device = s.whisper_device
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        self.device = device
        try:
            self.model = WhisperModel(path, device=device, compute_type=s.whisper_compute_type,
                                      cpu_threads=s.whisper_threads, local_files_only=not s.whisper_allow_download)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(f"NEXUS_STT_MODEL: cannot load {path}: {exc}") from None
        vad = s.whisper_vad
        self.vad = vad == "on" or (vad == "auto" and importlib.util.find_spec("onnxruntime") is not None)
        if vad == "on" and importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError("NEXUS_STT_WHISPER_VAD=on needs onnxruntime")

    def languages(self) -> list[str] | None:
        return list(self.model.supported_languages)

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def describe(self) -> str:
        kind = "multilingual" if self.multilingual else "English-only"
        return f"faster-whisper {kind} model on {self.device}, VAD {'on' if self.vad else 'off'}"

    def transcribe(self, samples: np.ndarray, job: Job, stop: threading.Event,
                   progress: Progress) -> Iterator[Segment]:
        segments, info = self.model.transcribe(
            samples, language=job.language, task=job.task, initial_prompt=job.prompt or None,
            # 0 is OpenAI's "let the model pick": whisper's usual fallback ladder.
            temperature=job.temperature if job.temperature > 0 else [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            beam_size=self.settings.whisper_beam_size, word_timestamps=job.words, vad_filter=self.vad)
        self.detected_language = info.language
        duration = samples.size / SAMPLE_RATE
        # The generator decodes one 30 s window per step: stopping between steps is the finest
        # grain faster-whisper offers.
        for seg in segments:
            progress.seconds = min(seg.end, duration)
            if stop.is_set():
                return
            # Whisper may place an end past the audio (its windows are padded to 30 s): clamp.
            yield Segment(start=round(min(seg.start, duration), 2), end=round(min(seg.end, duration), 2),
                          text=seg.text, tokens=list(seg.tokens), temperature=seg.temperature or 0.0,
                          avg_logprob=seg.avg_logprob, compression_ratio=seg.compression_ratio,
                          no_speech_prob=seg.no_speech_prob,
                          words=[Word(w.word, round(min(w.start, duration), 2), round(min(w.end, duration), 2))
                                 for w in seg.words or []])
        progress.seconds = duration
