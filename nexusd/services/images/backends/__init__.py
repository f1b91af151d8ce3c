"""Image backends: what the service asks of one, and how to pick one by name.

A backend's `generate` is blocking and runs in the service's single worker thread; it reports
each step through `job.on_step` and stops at the next step once `job.cancelled` is set.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from nexusd.services.images.settings import ImagesSettings


class JobCancelled(Exception):
    """The client went away (or the service is stopping); the job stopped early."""


@dataclass(eq=False)  # identity semantics: jobs live in a set
class Job:
    prompt: str
    width: int
    height: int
    n: int
    seed: int  # image i uses seed + i
    steps: int
    guidance_scale: float
    negative_prompt: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Called from the worker thread after each step: (step done, total steps).
    on_step: Callable[[int, int], None] = lambda step, total: None
    steps_done: int = 0


class Backend(ABC):
    """One loaded model. `load` and `generate` block; the service runs them off the loop."""

    native_size: tuple[int, int] = (512, 512)
    details: dict[str, Any]

    def __init__(self, settings: ImagesSettings, progress: Callable[[str], None],
                 gpu_memory: str | None = None) -> None:
        self.settings = settings
        self.progress = progress  # STATUS= text during the load (thread-safe)
        self.gpu_memory = gpu_memory  # NEXUS_GPU_MEMORY, else the declared resources.gpu_memory
        self.details = {}

    def load(self) -> None:
        """Load the model (may take minutes)."""

    def default_seed(self, prompt: str) -> int:
        """The seed of a request that names none: random, as OpenAI's images are."""
        return int.from_bytes(os.urandom(4), "big")

    def warmup(self) -> None:
        """One step, so the first request does not pay for kernel selection and allocation."""

    @abstractmethod
    def generate(self, job: Job) -> list[Image.Image]:
        ...

    def close(self) -> None:
        """Free what load() took (GPU memory)."""


def model_id(settings: ImagesSettings) -> str:
    """The id the model is listed under: NEXUS_IMAGES_MODEL_NAME, else `stub` or the folder name."""
    if settings.model_name:
        return settings.model_name
    if settings.backend == "stub":
        return "stub"
    return os.path.basename(os.path.normpath(settings.model)) or settings.model


def load_backend(settings: ImagesSettings, progress: Callable[[str], None],
                 gpu_memory: str | None = None) -> Backend:
    if settings.backend == "diffusers":
        # Imported only when chosen: torch and diffusers are the `images` extra.
        from nexusd.services.images.backends.diffusers import DiffusersBackend

        return DiffusersBackend(settings, progress, gpu_memory)
    from nexusd.services.images.backends.stub import StubBackend

    return StubBackend(settings, progress, gpu_memory)
