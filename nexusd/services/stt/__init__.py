"""Speech to text: OpenAI's POST /v1/audio/transcriptions and /v1/audio/translations over
PocketSphinx or faster-whisper (docs/stt.md).

A request is read (the file spooled, the fields validated), the audio decoded to 16 kHz mono in
a thread, then recognized by the backend in its worker. The answer is one response in the
requested format, or with `stream=true` the `transcript.text.delta` events as segments are
recognized and a closing `transcript.text.done`. A client that leaves stops the recognition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from nexusd.runtime import (
    ApiError,
    Capabilities,
    Concurrency,
    Endpoint,
    ModelInfo,
    Resources,
    Service,
    sse,
)
from nexusd.runtime.admission import in_worker
from nexusd.services.stt.audio import decode
from nexusd.services.stt.backends import Backend, Job, Segment, load_backend_class
from nexusd.services.stt.formats import CONTENT_TYPES, full_text, render, usage
from nexusd.services.stt.metrics import STTMetrics
from nexusd.services.stt.recognition import Recognition
from nexusd.services.stt.request import TranscriptionForm, TranslationForm, form_options, read_form
from nexusd.services.stt.settings import STTSettings

log = logging.getLogger("nexusd.stt")

OPENAI_MODEL = "whisper-1"
TRANSCRIBE, TRANSLATE = "audio.transcriptions", "audio.translations"


class STTService(Service):
    name = "stt"
    Settings = STTSettings
    description = "Speech to text, OpenAI /v1/audio/transcriptions and /translations (PocketSphinx, faster-whisper)"
    capabilities = Capabilities(domains=["audio"], modalities=["audio", "text"], streaming=True)
    default_resources = Resources(cpu="2", memory="2Gi")
    settings: STTSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend: Backend = load_backend_class(self.settings.backend)(self.settings)
        self.executor = ThreadPoolExecutor(self.backend.workers, thread_name_prefix="stt-worker")
        self.decoder = ThreadPoolExecutor(2, thread_name_prefix="stt-decode")  # PyAV, beside recognition
        self.metrics = STTMetrics(self.runtime.metrics.registry, self.backend.name)
        # max_inflight recognitions hold a slot (they share the backend's worker), max_queue wait;
        # a slot is held until the worker thread has really stopped (release(after=...)).
        self.admission = self.runtime.admission("stt", self.settings.max_inflight, self.settings.max_queue,
                                                estimate=10.0, what="The speech recognizer")
        self.model_ids = {self.backend.name, OPENAI_MODEL}
        self.loaded = False
        self.running: set[Recognition] = set()  # for /metrics-free introspection in tests and logs

    # --- what the service offers -------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        limit = self.settings.body_limit
        return [
            Endpoint("POST", "/v1/audio/transcriptions", self.transcriptions, TRANSCRIBE, streaming=True,
                     max_body=limit),
            Endpoint("POST", "/v1/audio/translations", self.translations, TRANSLATE, max_body=limit),
        ]

    def models(self) -> list[ModelInfo]:
        # Both operations, even for a backend that cannot translate: the gateway then routes a
        # translation here and the client learns why it cannot be done (400), not a 404.
        return [ModelInfo(id=self.backend.name, operations=[TRANSCRIBE, TRANSLATE], aliases=[OPENAI_MODEL],
                          default_for=[TRANSCRIBE, TRANSLATE], owned_by="nexusd",
                          details={"translates": self.loaded and self.backend.translates,
                                   "languages": self.backend.languages() if self.loaded else None})]

    def options(self) -> dict:
        return form_options(self.settings.max_upload)

    def concurrency(self) -> Concurrency:
        return self.admission.concurrency

    def checks(self):
        return {"backend": self.backend_loaded}

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.runtime.progress(f"loading the {self.backend.name} backend", extend_seconds=self.settings.start_timeout)
        await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.load)
        if self.backend.name == "whisper" and not getattr(self.backend, "multilingual", True):
            self.backend.translates = False  # type: ignore[misc]  # an English-only model
        self.loaded = True
        log.info("stt backend loaded: %s", self.backend.describe())

    async def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.decoder.shutdown(wait=False, cancel_futures=True)

    async def backend_loaded(self) -> str:
        if not self.loaded:
            raise RuntimeError(f"{self.backend.name} backend loading")
        return self.backend.describe()

    # --- handlers ----------------------------------------------------------------------
    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "translate")

    async def _serve(self, request: web.Request, task: str) -> web.StreamResponse:
        if not self.loaded:
            raise ApiError(503, f"The {self.backend.name} backend is still loading", code="not_ready")
        form_cls = TranscriptionForm if task == "transcribe" else TranslationForm
        form, upload = await read_form(request, form_cls, self.settings.max_upload)
        try:
            job = self._job(form, task)
            started = await self.admission.acquire()
            recognition: Recognition | None = None
            try:
                samples = await in_worker(self.decoder, lambda: decode(
                    upload.data, upload.filename, self.settings.max_seconds))
                upload.close()  # the samples are all we need now
                recognition = Recognition(self.backend, self.executor, samples, job)
                self.running.add(recognition)
                if getattr(form, "stream", False):
                    return await self._streamed(request, recognition)
                return await self._whole(recognition, form, task)
            finally:
                # The slot is handed on only once the worker thread has returned.
                self.admission.release(started, after=recognition.work if recognition else None)
                if recognition is not None:
                    self.running.discard(recognition)
                    self._account(recognition)
        finally:
            upload.close()

    def _job(self, form: TranscriptionForm | TranslationForm, task: str) -> Job:
        if form.model is not None and form.model not in self.model_ids:
            raise ApiError(404, f"The model {form.model!r} does not exist here; use one of "
                                f"{', '.join(sorted(self.model_ids))}", param="model", code="model_not_found")
        if task == "translate" and not self.backend.translates:
            raise ApiError(400, f"The {self.backend.name} backend does not translate; only transcriptions "
                                "are served here", param="model", code="unsupported_operation")
        language = getattr(form, "language", None)
        if language is not None:
            language = language.replace("_", "-").split("-")[0].lower()
            known = self.backend.languages()
            if known is not None and language not in known:
                raise ApiError(400, f"language {language!r} is not recognized by the {self.backend.name} "
                                    f"backend (it knows {', '.join(known[:12])}{'…' if len(known) > 12 else ''})",
                               param="language", code="unsupported_language")
        granularities = list(getattr(form, "timestamp_granularities", []))
        if granularities and form.response_format != "verbose_json":
            raise ApiError(400, "timestamp_granularities[] needs response_format verbose_json",
                           param="timestamp_granularities[]", code="invalid_value")
        if getattr(form, "stream", False) and form.response_format not in ("json", "text"):
            raise ApiError(400, f"stream=true gives transcript events; response_format {form.response_format} "
                                "cannot be streamed (use json or text)", param="stream", code="invalid_value")
        return Job(task=task, language=language, prompt=form.prompt, temperature=form.temperature,
                   words="word" in granularities)

    async def _whole(self, recognition: Recognition, form: TranscriptionForm | TranslationForm,
                     task: str) -> web.Response:
        segments: list[Segment] = []
        async with contextlib.aclosing(recognition.segments()) as stream:
            async for segment in stream:
                segments.append(segment)
        fmt = form.response_format
        job = recognition.job
        language = "en" if task == "translate" else (
            job.language or getattr(self.backend, "detected_language", None) or "en")
        body = render(fmt, segments, task=task, language=language,
                      duration=recognition.duration,
                      granularities=list(getattr(form, "timestamp_granularities", [])))
        return web.Response(text=body, headers={"Content-Type": CONTENT_TYPES[fmt]})

    async def _streamed(self, request: web.Request, recognition: Recognition) -> web.StreamResponse:
        # Prepared with the first segment, so that a failure before any is still an error envelope.
        resp = web.StreamResponse(headers=sse.HEADERS)
        segments: list[Segment] = []
        try:
            async with contextlib.aclosing(recognition.segments()) as stream:
                async for segment in stream:
                    if not resp.prepared:
                        await resp.prepare(request)
                    text = segment.text.strip()
                    if text:
                        delta = (" " if segments else "") + text
                        await resp.write(sse.event({"type": "transcript.text.delta", "delta": delta}))
                    segments.append(segment)
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write(sse.event({"type": "transcript.text.done", "text": full_text(segments),
                                        "usage": usage(recognition.duration)}))
            await resp.write_eof()
        except ConnectionResetError:  # the client went away mid-stream
            recognition.stop.set()
        except Exception as exc:
            if not resp.prepared:
                raise  # still time for a proper error envelope
            log.exception("recognition failed mid-stream")
            with contextlib.suppress(ConnectionResetError):
                error = ApiError(500, f"recognition failed: {exc}", code="internal_error")
                await resp.write(sse.error_event(error, typed=True))
                await resp.write_eof()
        return resp

    def _account(self, recognition: Recognition) -> None:
        seconds = recognition.duration if recognition.completed else recognition.progress.seconds
        self.metrics.audio_seconds.inc(seconds)
        if recognition.completed and seconds > 0:
            self.metrics.rtf.observe(recognition.busy_seconds / seconds)
        if not recognition.completed:
            self.metrics.cancelled.inc()
            log.info("recognition stopped after %.1f of %.1f s of audio", recognition.progress.seconds,
                     recognition.duration)
