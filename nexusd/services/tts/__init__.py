"""The TTS service: OpenAI's POST /v1/audio/speech and GET /v1/audio/voices.

Three ways to answer a speech request (OpenAI's `stream_format`):
- omitted: one complete response with Content-Length (exact WAV/FLAC headers);
- "audio": chunked transfer, each sentence's audio sent as soon as it is encoded;
- "sse": `speech.audio.delta` events (base64 audio), then `speech.audio.done` with usage.
Headers go out with the first audio, so a failure before any audio is still an error envelope.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
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
    parse_json,
    sse,
)
from nexusd.services.tts.audio import content_type
from nexusd.services.tts.backends import Backend, load_backend_class
from nexusd.services.tts.metrics import TTSMetrics
from nexusd.services.tts.request import OPENAI_MODELS, SpeechRequest, request_options
from nexusd.services.tts.sentences import split_sentences
from nexusd.services.tts.settings import TTSSettings
from nexusd.services.tts.synthesis import Synthesis
from nexusd.services.tts.voices import VoiceBook

log = logging.getLogger("nexusd.tts")


class TTSService(Service):
    name = "tts"
    Settings = TTSSettings
    description = "Text to speech, OpenAI /v1/audio/speech (eSpeak NG, Piper, Pocket TTS)"
    capabilities = Capabilities(domains=["audio"], modalities=["text", "audio"], streaming=True)
    default_resources = Resources(cpu="2", memory="2Gi")
    settings: TTSSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backend: Backend = load_backend_class(self.settings.backend)(self.settings)
        # One worker: no engine here may be called from two threads at once.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="tts-worker")
        self.voicebook: VoiceBook | None = None
        self.metrics = TTSMetrics(self.runtime.metrics.registry, self.backend.name)
        self.model_ids = {self.backend.name, *OPENAI_MODELS}
        # Up to max_inflight requests synthesize at once (interleaved sentence by sentence on the
        # one worker), max_queue more wait; 429 beyond.
        self.admission = self.runtime.admission("tts", self.settings.max_inflight, self.settings.max_queue,
                                                what="The speech service")

    # --- what the service offers -------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/audio/speech", self.speech, "audio.speech", streaming=True),
            Endpoint("GET", "/v1/audio/voices", self.voices, "audio.voices"),
        ]

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(id=self.backend.name, operations=["audio.speech"], aliases=list(OPENAI_MODELS),
                          default_for=["audio.speech"], owned_by="nexusd")]

    def options(self) -> dict:
        return request_options()

    def concurrency(self) -> Concurrency:
        return self.admission.concurrency

    def checks(self):
        return {"backend": self.backend_loaded}

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self.runtime.progress(f"loading the {self.backend.name} backend", extend_seconds=self.settings.start_timeout)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.backend.load)
        self.voicebook = VoiceBook(self.backend, self.settings.voice_overrides)
        log.info("tts backend loaded: %s", self.backend.describe())

    async def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def backend_loaded(self) -> str:
        if self.voicebook is None:
            raise RuntimeError(f"{self.backend.name} backend loading")
        return self.backend.describe()

    # --- handlers ----------------------------------------------------------------------
    async def voices(self, request: web.Request) -> web.Response:
        book = self._book()
        body = {"object": "list", "backend": self.backend.name, "data": book.listing()}
        variants = getattr(self.backend, "variants", None)
        if variants:
            body["variants"] = variants()  # eSpeak: append "+<variant>" to a language
        return web.json_response(body)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter()
        body = await parse_json(request, SpeechRequest)
        if body.model is not None and body.model not in self.model_ids:
            raise ApiError(404, f"The model {body.model!r} does not exist here; use one of "
                                f"{', '.join(sorted(self.model_ids))}", param="model", code="model_not_found")
        voice = self._book().resolve(body.voice)
        sentences = split_sentences(body.input, self.settings.max_sentence_chars)
        if not sentences:
            raise ApiError(400, "input has no words to speak", param="input", code="invalid_value")
        started = await self.admission.acquire()
        job = Synthesis(self.backend, self.executor, sentences, voice, body.speed, body.response_format,
                        streamed=body.stream_format is not None, on_sentence=self.metrics.sentences.inc)
        self.metrics.characters.inc(len(body.input))
        try:
            if body.stream_format is None:
                return await self._whole(request, job, body, arrived)
            return await self._streamed(request, job, body, arrived)
        except asyncio.CancelledError:  # the client went away: the runtime cancelled the handler
            job.cancelled = True
            raise
        finally:
            self.admission.release(started)
            self._account(job)

    def _book(self) -> VoiceBook:
        if self.voicebook is None:
            raise ApiError(503, f"The {self.backend.name} backend is still loading", code="not_ready")
        return self.voicebook

    async def _whole(self, request: web.Request, job: Synthesis, body: SpeechRequest,
                     arrived: float) -> web.StreamResponse:
        parts: list[bytes] = []
        async with contextlib.aclosing(job.chunks()) as chunks:
            async for data in chunks:
                parts.append(data)
        self.metrics.ttfb("whole", time.perf_counter() - arrived)
        return web.Response(body=b"".join(parts), headers={"Content-Type": content_type(body.response_format)})

    async def _streamed(self, request: web.Request, job: Synthesis, body: SpeechRequest,
                        arrived: float) -> web.StreamResponse:
        events = body.stream_format == "sse"
        # Prepared with the first audio, so that a failure before any is still an error envelope.
        resp = web.StreamResponse(headers=sse.HEADERS if events else {
            "Content-Type": content_type(body.response_format), "Cache-Control": "no-cache"})
        try:
            async with contextlib.aclosing(job.chunks()) as chunks:
                async for data in chunks:
                    if not resp.prepared:
                        await resp.prepare(request)
                        self.metrics.ttfb(body.stream_format or "audio", time.perf_counter() - arrived)
                    await resp.write(sse.event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                                     if events else data)
            if not resp.prepared:
                await resp.prepare(request)
            if events:
                await resp.write(sse.event({"type": "speech.audio.done", "usage": self._usage(body, job)}))
            await resp.write_eof()
        except ConnectionResetError:  # the client went away mid-stream
            job.cancelled = True
        except Exception as exc:
            if not resp.prepared:
                raise  # still time for a proper error envelope
            log.exception("synthesis failed mid-stream")
            if events:
                with contextlib.suppress(ConnectionResetError):
                    error = ApiError(500, f"synthesis failed: {exc}", code="internal_error")
                    await resp.write(sse.error_event(error, typed=True))
                    await resp.write_eof()
            elif request.transport is not None:
                # No end chunk: the client sees a broken transfer, not a short "complete" file.
                request.transport.close()
        return resp

    @staticmethod
    def _usage(body: SpeechRequest, job: Synthesis) -> dict[str, int]:
        # No tokenizer stands behind these numbers: input tokens are characters (what tts-1 is
        # billed on), output tokens one per 20 ms of audio.
        inp, out = len(body.input), math.ceil(job.audio_seconds * 50)
        return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}

    def _account(self, job: Synthesis) -> None:
        seconds = job.audio_seconds
        self.metrics.audio_seconds.inc(seconds)
        if seconds > 0:
            self.metrics.rtf.observe(job.busy_seconds / seconds)
        if job.cancelled:
            self.metrics.cancelled.inc()
            log.info("client went away; synthesis stopped after %d of %d sentences",
                     job.sentences_done, len(job.sentences))
