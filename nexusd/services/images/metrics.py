"""The images service's Prometheus metrics, on the runtime's registry (the generator's queue
is the runtime's: `nexus_queue_depth{queue="images"}`, `nexus_queue_running`, `nexus_queue_rejected_total`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)
_STEP_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


class ImagesMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.generated = Counter("nexus_images_generated", "Images generated", ["backend"], registry=registry)
        self.seconds_per_image = Histogram("nexus_images_seconds_per_image",
                                           "Generation time divided by images in the job",
                                           buckets=_SECONDS, registry=registry)
        self.seconds_per_step = Histogram("nexus_images_seconds_per_step", "Time of one denoising step",
                                          buckets=_STEP_SECONDS, registry=registry)
        self.cancelled = Counter("nexus_images_cancelled", "Jobs stopped early (client gone or stopping)",
                                 registry=registry)
