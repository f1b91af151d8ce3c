"""TTS metrics: characters in, audio seconds out, real-time factor, time to first audio byte."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class TTSMetrics:
    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.characters = Counter("nexus_tts_input_characters", "Characters of input synthesized",
                                  ["backend"], registry=registry).labels(backend)
        self.audio_seconds = Counter("nexus_tts_audio_seconds", "Seconds of audio produced",
                                     ["backend"], registry=registry).labels(backend)
        self.rtf = Histogram("nexus_tts_real_time_factor",
                             "Synthesis time divided by audio duration (below 1 = faster than real time)",
                             ["backend"], buckets=RTF_BUCKETS, registry=registry).labels(backend)
        self._ttfb = Histogram("nexus_tts_time_to_first_byte_seconds",
                               "From request arrival to the first audio byte sent",
                               ["backend", "mode"], buckets=TTFB_BUCKETS, registry=registry)
        self.sentences = Counter("nexus_tts_sentences", "Sentences synthesized (long inputs go sentence by sentence)",
                                 ["backend"], registry=registry).labels(backend)
        self._backend = backend
        self.cancelled = Counter("nexus_tts_cancelled_requests",
                                 "Requests stopped early because the client went away",
                                 ["backend"], registry=registry).labels(backend)

    def ttfb(self, mode: str, seconds: float) -> None:
        self._ttfb.labels(self._backend, mode).observe(seconds)
