"""STT metrics: audio seconds in, real-time factor, cancelled requests (429s are the runtime's
`nexus_queue_rejected_total{queue="stt"}`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class STTMetrics:
    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.audio_seconds = Counter("nexus_stt_audio_seconds", "Seconds of audio transcribed or translated",
                                     ["backend"], registry=registry).labels(backend)
        self.rtf = Histogram("nexus_stt_real_time_factor",
                             "Recognition time divided by audio duration (below 1 = faster than real time)",
                             ["backend"], buckets=RTF_BUCKETS, registry=registry).labels(backend)
        self.cancelled = Counter("nexus_stt_cancelled_requests",
                                 "Requests stopped early because the client went away",
                                 ["backend"], registry=registry).labels(backend)
