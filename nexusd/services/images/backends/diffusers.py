"""The `diffusers` backend: any text-to-image pipeline `AutoPipelineForText2Image` can load
(SD 1.5, SDXL, ...), from a local folder or the local Hugging Face cache.

CUDA when present (fp16, GPU memory capped by NEXUS_GPU_MEMORY through the runtime), else CPU in
fp32 (fp16 on CPU is slow or unsupported). `generate` runs in the service's worker thread; the
step callback reports progress and stops the denoising loop once the job is cancelled.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from nexusd.runtime.gpu import apply_gpu_memory_limit
from nexusd.services.images.backends import Backend, Job, JobCancelled

log = logging.getLogger("nexusd.images.diffusers")


class DiffusersBackend(Backend):
    def load(self) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image

        s = self.settings
        cuda = torch.cuda.is_available() and s.device != "cpu"
        if s.device == "cuda" and not cuda:
            raise RuntimeError("NEXUS_IMAGES_DEVICE=cuda but torch sees no CUDA device")
        self.device = "cuda" if cuda else "cpu"
        self.dtype = torch.float16 if cuda else torch.float32
        fraction = None
        if cuda:
            # The server applied it already; applying again is idempotent and gives us the figure.
            fraction = apply_gpu_memory_limit(self.gpu_memory)
        self.progress(f"loading {s.model} ({self.device}, {str(self.dtype).removeprefix('torch.')})")
        started = time.monotonic()
        pipe = AutoPipelineForText2Image.from_pretrained(
            s.model, local_files_only=not s.allow_download, **_dtype_kwarg(self.dtype),
        )
        if cuda:
            self.progress(f"moving {s.model} to the GPU")
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        vae_scale = getattr(pipe, "vae_scale_factor", 8)
        sample = getattr(getattr(pipe, "unet", None), "config", None)
        sample_size = getattr(sample, "sample_size", None) if sample is not None else None
        if isinstance(sample_size, int):
            self.native_size = (sample_size * vae_scale, sample_size * vae_scale)
        self.details = {
            "backend": "diffusers", "pipeline": type(pipe).__name__, "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."), "gpu_memory_fraction": fraction,
            "native_size": f"{self.native_size[0]}x{self.native_size[1]}",
            "load_seconds": round(time.monotonic() - started, 2),
        }
        log.info("loaded %s: %s", s.model, self.details)

    def warmup(self) -> None:
        self.progress("warming up (1 step)")
        w, h = self.native_size
        self.generate(Job(prompt="warm-up", width=w, height=h, n=1, seed=0, steps=1, guidance_scale=0.0))

    def generate(self, job: Job) -> list[Any]:
        import torch

        if job.cancelled.is_set():
            raise JobCancelled
        # One generator per image: image i starts from the noise of seed + i.
        generators = [torch.Generator(self.device).manual_seed((job.seed + i) % 2**32) for i in range(job.n)]

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            job.steps_done = step + 1
            job.on_step(step + 1, job.steps)
            if job.cancelled.is_set():
                pipe._interrupt = True  # diffusers' pipelines skip the remaining steps
            return kwargs

        with torch.inference_mode():
            out = self.pipe(
                prompt=job.prompt, negative_prompt=job.negative_prompt, width=job.width,
                height=job.height, num_inference_steps=job.steps, guidance_scale=job.guidance_scale,
                num_images_per_prompt=job.n, generator=generators, callback_on_step_end=on_step_end,
                output_type="pil",
            )
        if job.cancelled.is_set():
            raise JobCancelled
        return list(out.images)

    def close(self) -> None:
        pipe = getattr(self, "pipe", None)
        self.pipe = None
        if pipe is not None and self.device == "cuda":
            import torch

            del pipe
            torch.cuda.empty_cache()


def _dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """diffusers 0.36+ renamed `torch_dtype` to `dtype` (the old name warns); older ones only
    know `torch_dtype`. The `images` extra accepts both."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - a version probe
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}
