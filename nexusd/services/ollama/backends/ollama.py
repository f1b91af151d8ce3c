"""Engine `ollama`: wraps an Ollama daemon on the same host (NEXUS_OLLAMA_UPSTREAM).

- /v1/* are relayed with bounds applied, streamed usage forced on (so token metrics are exact)
  and the daemon's errors mapped into OpenAI envelopes.
- /api/* pass through byte for byte (see upstream.passthrough).
- Readiness: the daemon answers /api/version and every NEXUS_OLLAMA_MODELS model is present;
  missing ones are pulled at start with progress in STATUS= (and EXTEND_TIMEOUT_USEC=).
- /api/ps is polled for the loaded-model gauges; /api/tags (+ /api/show) feed the metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.runtime.http import client_session
from nexusd.runtime.metadata import ModelInfo
from nexusd.runtime.service import Check, Endpoint
from nexusd.services.ollama.backends import Engine
from nexusd.services.ollama.backends.upstream import (
    DOWN_ERRORS,
    daemon_down,
    passthrough,
    upstream_error,
)
from nexusd.services.ollama.metrics import GenerationTimer
from nexusd.services.ollama.native_caps import CAPPED_ROUTES, capped_body
from nexusd.services.ollama.request import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    capped,
    start_sse,
)

log = logging.getLogger("nexusd.ollama")

CHAT_OPS = ["chat.completions", "completions"]
# The native routes listed in /v1/metadata (as ollama.<name>); anything else under /api/ is
# served by an unlisted catch-all, so new daemon routes work without a release of ours.
NATIVE_ROUTES = [
    ("GET", "/api/version", "ollama.version", False),
    ("GET", "/api/tags", "ollama.tags", False),
    ("GET", "/api/ps", "ollama.ps", False),
    ("POST", "/api/show", "ollama.show", False),
    ("POST", "/api/pull", "ollama.pull", True),
    ("POST", "/api/chat", "ollama.chat", True),
    ("POST", "/api/generate", "ollama.generate", True),
    ("POST", "/api/embed", "ollama.embed", False),
    ("POST", "/api/blobs/{digest}", "ollama.blobs", False),
]


def canonical(name: str) -> str:
    """Ollama's `model` means `model:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def model_operations(name: str, show: dict[str, Any]) -> list[str]:
    caps = show.get("capabilities")
    if isinstance(caps, list):  # Ollama ≥ 0.6 says what a model can do
        ops = list(CHAT_OPS) if "completion" in caps else []
        return ops + (["embeddings"] if "embedding" in caps else [])
    family = str((show.get("details") or {}).get("family", ""))
    return ["embeddings"] if "bert" in family or "embed" in name else list(CHAT_OPS)


class OllamaEngine(Engine):
    def __init__(self, service) -> None:
        super().__init__(service)
        self.upstream = self.settings.upstream
        self.wanted = self.settings.model_list  # as configured: shown so in STATUS=
        self.tags: list[dict[str, Any]] = []
        self.shows: dict[str, dict[str, Any]] = {}  # digest → /api/show answer
        self.pulling: dict[str, str] = {}  # model → progress text or error
        self.strip_auth = bool(self.service.shared.internal_token)
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        # Own session: no total timeout (pulls and long generations), bytes passed as they come.
        self.http = client_session(total_timeout=None, auto_decompress=False, limit_per_host=256)
        self._tasks = [asyncio.create_task(self.pull_missing()), asyncio.create_task(self.poll_ps())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.close()

    async def _get(self, path: str, timeout: float = 3.0) -> Any:
        async with self.http.get(self.upstream + path, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {r.status}")
            return await r.json(content_type=None)

    async def refresh_tags(self) -> list[str]:
        self.tags = list((await self._get("/api/tags")).get("models") or [])
        for m in self.tags:
            digest = str(m.get("digest", ""))
            if digest not in self.shows:
                with contextlib.suppress(Exception):
                    async with self.http.post(self.upstream + "/api/show", json={"model": m["name"]},
                                              timeout=aiohttp.ClientTimeout(total=3)) as r:
                        self.shows[digest] = await r.json(content_type=None) if r.status == 200 else {}
        return [canonical(str(m.get("name", ""))) for m in self.tags]

    # --- pulls at start ----------------------------------------------------------------
    async def pull_missing(self) -> None:
        if not self.wanted:
            return
        delay = 0.2
        while True:  # the daemon may start after us (After=ollama.service orders, not waits)
            try:
                present = await self.refresh_tags()
                break
            except Exception as exc:  # noqa: BLE001 - retried until it answers or we stop
                self.runtime.status(f"waiting for the Ollama daemon at {self.upstream}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        for name in self.wanted:
            if canonical(name) not in present:
                await self.pull(name)
        with contextlib.suppress(Exception):
            await self.refresh_tags()

    async def pull(self, name: str, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            try:
                error = await self._pull_once(name)
            except DOWN_ERRORS + (aiohttp.ClientPayloadError,) as exc:
                error = f"daemon connection lost: {exc or type(exc).__name__}"
            if error is None:
                self.pulling.pop(name, None)
                return
            self.pulling[name] = f"pull failed: {error}"
            log.error("pulling %s failed (attempt %d/%d): %s", name, attempt, attempts, error)
            if attempt < attempts:
                await asyncio.sleep(2 ** attempt)

    async def _pull_once(self, name: str) -> str | None:
        """One streaming /api/pull; returns the daemon's error, or None on success."""
        totals: dict[str, int] = {}
        done: dict[str, int] = {}
        last_pct, last_report = -1, 0.0
        self.runtime.progress(f"pulling {name}")
        async with self.http.post(self.upstream + "/api/pull", json={"model": name, "stream": True}) as r:
            if r.status != 200:
                return (await upstream_error(r, 0)).message
            async for line in r.content:
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "error" in msg:
                    return str(msg["error"])
                if msg.get("digest") and msg.get("total"):
                    totals[msg["digest"]] = int(msg["total"])
                    done[msg["digest"]] = int(msg.get("completed") or 0)
                pct = int(100 * sum(done.values()) / sum(totals.values())) if totals else 0
                now = time.monotonic()
                # Report each new percent, and at least every 5 s while bytes arrive, so the
                # start timeout is extended exactly as long as the pull makes progress.
                if pct != last_pct or now - last_report > 5:
                    text = f"pulling {name}: {pct}%"
                    self.pulling[name] = text
                    self.runtime.progress(text, extend_seconds=60)
                    last_pct, last_report = pct, now
                if msg.get("status") == "success":
                    return None
        return "pull stream ended without success"

    # --- readiness, metadata, gauges ---------------------------------------------------
    def checks(self) -> dict[str, Check]:
        return {"daemon": self.check_daemon, "models": self.check_models}

    async def check_daemon(self) -> str:
        version = (await self._get("/api/version", timeout=2)).get("version", "?")
        return f"ollama {version} at {self.upstream}"

    async def check_models(self) -> str:
        present = set(await self.refresh_tags())
        missing = [m for m in self.wanted if canonical(m) not in present]
        if missing:
            raise RuntimeError("missing: " + ", ".join(f"{m} ({self.pulling.get(m, 'not pulled')})"
                                                       for m in missing))
        return f"{len(present)} models"

    async def poll_ps(self) -> None:
        """Loaded-model gauges; the model list too, so models pulled by hand (`ollama pull`)
        reach the metadata without a restart."""
        while True:
            with contextlib.suppress(Exception):
                self.metrics.set_loaded(list((await self._get("/api/ps")).get("models") or []))
                await self.refresh_tags()
            await asyncio.sleep(self.settings.ps_interval)

    def models(self) -> list[ModelInfo]:
        infos = [(canonical(str(m.get("name", ""))), m) for m in self.tags]
        ops = {name: model_operations(name, self.shows.get(str(m.get("digest", "")), {})) for name, m in infos}
        wanted = [canonical(m) for m in self.wanted]
        order = wanted + [n for n, _ in infos if n not in wanted]
        defaults: dict[str, str] = {}
        for op in ("chat.completions", "completions", "embeddings"):
            first = next((n for n in order if op in ops.get(n, [])), None)
            if first:
                defaults[op] = first
        out = []
        for name, m in infos:
            details = m.get("details") or {}
            out.append(ModelInfo(
                id=name, operations=ops[name], owned_by="ollama",
                aliases=[name.removesuffix(":latest")] if name.endswith(":latest") else [],
                default_for=[op for op, n in defaults.items() if n == name],
                details={"size": m.get("size"), "digest": m.get("digest"),
                         **{k: details[k] for k in ("family", "parameter_size", "quantization_level")
                            if k in details}},
            ))
        return out

    def extra_metadata(self) -> dict[str, Any]:
        return {"engine": "ollama", "upstream": self.upstream}

    # --- native /api/* -----------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        eps = [Endpoint(m, p, self.native, op, streaming=s, passthrough=True) for m, p, op, s in NATIVE_ROUTES]
        eps += [
            Endpoint("HEAD", "/api/blobs/{digest}", self.native, "ollama.blobs", passthrough=True, listed=False),
            # `ollama` CLI heartbeat (HEAD /) and anything the daemon adds later.
            Endpoint("GET", "/", self.native, "ollama.root", passthrough=True, listed=False),
            Endpoint("HEAD", "/", self.native, "ollama.root", passthrough=True, listed=False),
            Endpoint("*", "/api/{tail:.*}", self.native, "ollama.api", passthrough=True, listed=False),
        ]
        return eps

    async def native(self, request: web.Request) -> web.StreamResponse:
        body = None
        if request.method == "POST" and request.path in CAPPED_ROUTES:  # the service's caps apply here too
            capped = await capped_body(request, self.settings.max_tokens, self.settings.context)
            if isinstance(capped, web.Response):
                return capped
            body = capped
        return await passthrough(request, self.http, self.upstream, strip_auth=self.strip_auth,
                                 retry_after=self.settings.retry_after, body=body)

    # --- OpenAI /v1 relay --------------------------------------------------------------
    async def chat(self, request: web.Request, body: ChatRequest, model: str) -> web.StreamResponse:
        payload = body.model_dump(exclude_none=True)
        payload.pop("max_completion_tokens", None)
        payload["max_tokens"] = capped(body.requested_max_tokens(), self.settings.max_tokens)
        return await self._generate(request, "/v1/chat/completions", payload, body, model, "chat.completions")

    async def completions(self, request: web.Request, body: CompletionRequest, model: str) -> web.StreamResponse:
        payload = body.model_dump(exclude_none=True)
        payload["max_tokens"] = capped(body.requested_max_tokens(), self.settings.max_tokens)
        return await self._generate(request, "/v1/completions", payload, body, model, "completions")

    async def embeddings(self, request: web.Request, body: EmbeddingRequest, model: str) -> web.StreamResponse:
        body.inputs()
        payload = body.model_dump(exclude_none=True) | {"model": model}
        doc = await self._post_json("/v1/embeddings", payload)
        self.metrics.requests.labels(model, "embeddings", "ok").inc()
        self.metrics.usage(model, doc.get("usage"))
        return web.json_response(doc)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        try:
            async with self.http.get(self.upstream + "/v1/models") as r:
                if r.status != 200:
                    raise await upstream_error(r, self.settings.retry_after)
                return web.json_response(await r.json(content_type=None))
        except DOWN_ERRORS as exc:
            raise daemon_down(self.upstream, exc, self.settings.retry_after) from None

    async def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.http.post(self.upstream + path, json=payload) as r:
                if r.status != 200:
                    raise await upstream_error(r, self.settings.retry_after)
                try:
                    return await r.json(content_type=None)
                except ValueError:
                    raise ApiError(502, "The Ollama daemon answered with invalid JSON",
                                   code="upstream_error") from None
        except DOWN_ERRORS as exc:
            raise daemon_down(self.upstream, exc, self.settings.retry_after) from None

    async def _generate(self, request: web.Request, path: str, payload: dict[str, Any],
                        body: ChatRequest | CompletionRequest, model: str, op: str) -> web.StreamResponse:
        if body.n > 1:  # Ollama's OpenAI API answers one choice whatever n says
            raise ApiError(400, "n: the ollama engine gives one choice per request", param="n",
                           code="unsupported_parameter")
        payload["model"] = model
        timer = GenerationTimer(self.metrics, model, op)
        if not body.stream:
            try:
                doc = await self._post_json(path, payload)
            except asyncio.CancelledError:  # the client went away: the runtime cancels the handler
                timer.done(None, "cancelled")
                raise
            except ApiError:
                timer.done(None, "error")
                raise
            timer.done(doc.get("usage"))
            return web.json_response(doc)
        # Always ask for the usage chunk: the metrics count exactly what the daemon reports.
        # A client that did not ask for it does not get it.
        payload["stream_options"] = {"include_usage": True}
        try:
            up = await self.http.post(self.upstream + path, json=payload)
        except DOWN_ERRORS as exc:
            timer.done(None, "error")
            raise daemon_down(self.upstream, exc, self.settings.retry_after) from None
        usage = None
        try:
            if up.status != 200:
                timer.done(None, "error")
                raise await upstream_error(up, self.settings.retry_after)
            resp = await start_sse(request)
            async for line in up.content:
                if line.startswith(b"data: {"):
                    timer.token()
                    if b'"usage":{' in line or b'"usage": {' in line:
                        chunk = json.loads(line[6:])
                        usage = chunk.get("usage") or usage
                        if not chunk.get("choices") and not body.include_usage:
                            continue
                await resp.write(line)
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, asyncio.CancelledError) as exc:
            up.close()  # the daemon sees the connection go and stops generating
            self.metrics.cancelled.labels(model).inc()
            timer.done(usage, "cancelled")
            if isinstance(exc, asyncio.CancelledError):
                raise
            return resp
        except (aiohttp.ClientPayloadError, *DOWN_ERRORS) as exc:
            log.warning("daemon stream broke: %s", exc)  # headers are sent: end the stream short
            timer.done(usage, "error")
            return resp
        finally:
            up.release()
        timer.done(usage)
        return resp
