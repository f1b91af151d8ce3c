"""The images service: OpenAI's `POST /v1/images/generations` on a stub or diffusers backend,
and `GET /v1/images/files/{id}` for `response_format=url` (see docs/images.md)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from nexusd.runtime import (
    ApiError,
    Capabilities,
    Concurrency,
    Endpoint,
    ModelInfo,
    Resources,
    Service,
)
from nexusd.runtime.validation import parse_json
from nexusd.services.images.backends import Backend, Job, JobCancelled, load_backend, model_id
from nexusd.services.images.files import FileStore
from nexusd.services.images.metrics import ImagesMetrics
from nexusd.services.images.request import (
    MAX_SEED,
    OPENAI_SIZES,
    GenerationRequest,
    check_bounds,
    parse_size,
    resolve_steps,
)
from nexusd.services.images.settings import ImagesSettings

log = logging.getLogger("nexusd.images")

# OpenAI's model names are served by whatever backend is configured.
OPENAI_ALIASES = ["dall-e-2", "dall-e-3", "gpt-image-1"]


class ImagesService(Service):
    name = "images"
    Settings = ImagesSettings
    description = "Text to image, OpenAI /v1/images/generations (stub or diffusers)"
    capabilities = Capabilities(domains=["image"], modalities=["image"])
    default_resources = Resources(cpu="4", memory="16Gi", gpu="nvidia-gpu", gpu_memory="12Gi")
    settings: ImagesSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_id = model_id(self.settings)
        self.metrics = ImagesMetrics(self.runtime.metrics.registry)
        self.backend: Backend | None = None
        self.load_error: str | None = None
        self.jobs: set[Job] = set()
        self.current: Job | None = None
        # One job on the generator at a time, a bounded queue in front: torch work never runs on
        # the event loop (the watchdog pings from it), and one job at a time is what a GPU does best.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="images-gen")
        self.admission = self.runtime.admission("images", 1, self.settings.max_queue, estimate=5.0,
                                                what="The image generator")
        self.store = FileStore(Path(self.settings.cache_dir) / "files", self.runtime.instance_id,
                               self.settings.file_ttl)
        self.tasks: list[asyncio.Task[None]] = []  # the loader and the file sweeper

    # --- what the service offers -------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/images/generations", self.generate, "images.generate",
                     max_body=256 * 1024),
            # A capability URL: the 128-bit token in the id is the credential (as OpenAI's).
            Endpoint("GET", "/v1/images/files/{file_id}", self.file, "images.files", public=True),
        ]

    def models(self) -> list[ModelInfo]:
        details = dict(self.backend.details) if self.backend else {"backend": self.settings.backend}
        return [ModelInfo(id=self.model_id, operations=["images.generate"], aliases=OPENAI_ALIASES,
                          default_for=["images.generate"], owned_by="nexusd", details=details)]

    def concurrency(self) -> Concurrency:
        return self.admission.concurrency

    def extra_metadata(self) -> dict[str, Any]:
        return {"backend": self.settings.backend}

    def options(self) -> dict[str, Any]:
        s = self.settings
        return {
            "n": {"type": "integer", "minimum": 1, "maximum": s.max_n, "default": 1},
            "size": {"type": "string", "enum": ["auto", *OPENAI_SIZES], "pattern": r"^\d+x\d+$",
                     "description": f"WxH, multiples of 8, {s.min_side}..{s.max_side} per side"},
            "prompt": {"type": "string", "maxLength": s.max_prompt_chars},
            "quality": {"enum": ["auto", "low", "medium", "high", "standard", "hd"]},
            "style": {"enum": ["vivid", "natural"]},
            "response_format": {"enum": ["url", "b64_json"], "default": s.default_response_format},
            "output_format": {"enum": ["png", "jpeg", "webp"], "default": "png"},
            "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
            "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            "steps": {"type": "integer", "minimum": 1, "maximum": s.max_steps, "default": s.default_steps},
            "guidance_scale": {"type": "number", "minimum": 0, "maximum": 50, "default": s.guidance_scale},
            "negative_prompt": {"type": "string", "maxLength": s.max_prompt_chars},
        }

    def checks(self) -> dict[str, Any]:
        return {"model": self.model_loaded}

    async def model_loaded(self) -> str:
        if self.backend is None:
            raise RuntimeError(f"load failed: {self.load_error}" if self.load_error else "loading")
        return f"{self.model_id} ({self.settings.backend})"

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.store.open()
        self.tasks = [asyncio.create_task(self.store.sweep_forever()), asyncio.create_task(self.load())]

    async def load(self) -> None:
        """Load and warm up in the worker thread; the `model` check turns green at the end,
        and the server sends READY=1 on it."""
        gpu_memory = self.shared.gpu_memory or self.resources.gpu_memory
        backend = load_backend(self.settings, self.runtime.progress, gpu_memory)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, backend.load)
            if self.settings.warmup:
                await loop.run_in_executor(self.executor, backend.warmup)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, the unit's start times out
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the %s backend failed", self.settings.backend)
            self.runtime.status(f"load failed: {self.load_error}"[:200])
            return
        self.backend = backend

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for job in list(self.jobs):  # requests still running after the drain stop at their next step
            job.cancelled.set()
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        if self.backend is not None:
            self.backend.close()

    # --- handlers ----------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.Response:
        req = await parse_json(request, GenerationRequest)
        s = self.settings
        check_bounds(req, s)
        if req.model is not None and req.model not in (self.model_id, *OPENAI_ALIASES):
            raise ApiError(404, f"The model {req.model!r} does not exist on this service",
                           param="model", code="model_not_found")
        backend = self.backend
        if backend is None:
            raise ApiError(503, "The image model is still loading", code="model_loading",
                           headers={"Retry-After": "5"})
        width, height = parse_size(req.size, s, backend.native_size)
        job = Job(
            prompt=req.prompt, width=width, height=height, n=req.n,
            seed=req.seed if req.seed is not None else backend.default_seed(req.prompt),
            steps=resolve_steps(req, s), negative_prompt=req.negative_prompt,
            guidance_scale=req.guidance_scale if req.guidance_scale is not None else s.guidance_scale,
        )
        job.on_step = self._step_reporter(job)
        started = time.monotonic()
        images = await self._run(request, backend, job)
        self.metrics.generated.labels(s.backend).inc(len(images))
        self.metrics.seconds_per_image.observe((time.monotonic() - started) / max(1, len(images)))
        fmt = req.output_format
        blobs = await asyncio.to_thread(lambda: [encode(im, fmt, req.output_compression) for im in images])
        response_format = req.response_format or s.default_response_format
        data = []
        for i, blob in enumerate(blobs):
            item: dict[str, Any] = {"revised_prompt": req.prompt, "seed": (job.seed + i) % (MAX_SEED + 1)}
            if response_format == "b64_json":
                item["b64_json"] = base64.b64encode(blob).decode()
            else:
                file_id = await asyncio.to_thread(self.store.put, blob, fmt)
                item["url"] = f"{self.public_url}/v1/images/files/{file_id}"
            data.append(item)
        return web.json_response({"created": int(time.time()), "data": data, "output_format": fmt,
                                  "size": f"{width}x{height}", "quality": req.quality})

    @property
    def public_url(self) -> str:
        return (self.settings.public_url or self.runtime.base_url).rstrip("/")

    async def _run(self, request: web.Request, backend: Backend, job: Job) -> list[Any]:
        """Queue the job and run it on the generator. A client that goes away cancels this
        handler: the job leaves the queue, or stops at its next step (`job.cancelled`)."""
        self.jobs.add(job)
        try:
            return await self.admission.run(self.executor, lambda: backend.generate(job), job.cancelled)
        except ValueError as exc:  # the pipeline refused the arguments (e.g. steps beyond its schedule)
            raise ApiError(400, f"The model refused the request: {exc}", code="invalid_value") from None
        except JobCancelled:
            self.metrics.cancelled.inc()
            raise ApiError(503, "The service is stopping; the job was cancelled", code="cancelled") from None
        except asyncio.CancelledError:
            self.metrics.cancelled.inc()
            log.info("client gone: job stopped after %d/%d steps", job.steps_done, job.steps)
            raise
        finally:
            self.jobs.discard(job)

    def _step_reporter(self, job: Job) -> Any:
        last = [time.monotonic()]
        status = self.runtime.status
        per_step = self.metrics.seconds_per_step

        def on_step(step: int, total: int) -> None:  # runs in the worker thread
            now = time.monotonic()
            per_step.observe(now - last[0])
            last[0] = now
            self.current = job
            status(f"generating: step {step}/{total}")

        return on_step

    async def file(self, request: web.Request) -> web.Response:
        found = self.store.get(request.match_info["file_id"])
        if found is None:
            raise ApiError(404, "No such image: expired, or not made by this instance", code="not_found")
        path, content_type = found
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:  # expired between the check and the read
            raise ApiError(404, "No such image: expired", code="not_found") from None
        return web.Response(body=body, content_type=content_type,
                            headers={"Cache-Control": "private, max-age=300"})


def encode(image: Any, fmt: str, compression: int | None) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG")
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=compression if compression is not None else 90)
    else:
        image.save(buf, "WEBP", quality=compression if compression is not None else 90)
    return buf.getvalue()
