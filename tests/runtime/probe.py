"""`ProbeService`: a small real Service used by the runtime tests. Each endpoint exercises one
runtime feature (validation, body limit, unhandled error, public and pass-through routes, the
shared client, admission, SSE), and two make it misbehave (a blocked event loop for the watchdog
tests, a slow request for the drain tests). In process through `serve_inprocess`, or as its own
process (`python -m tests.runtime.probe`, through the runtime's public `main`, as `nexusd run`)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from pydantic import BaseModel, Field

from nexusd.runtime import ApiError, Endpoint, Resources, Service, ServiceSettings, parse_json, sse
from nexusd.runtime.settings import service_config


class ProbeSettings(ServiceSettings):
    model_config = service_config("probe")


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=10)
    count: int = Field(1, ge=1, le=5)


class ProbeService(Service):
    name = "probe"
    Settings = ProbeSettings
    default_resources = Resources(cpu="1", memory="64Mi")
    error_formats = {"/api/": "ollama"}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.healthy = True
        self.reloads = 0
        # /v1/work: one job at a time in a worker thread, one may wait (the runtime's admission)
        self.gate = self.runtime.admission("probe", 1, 1, what="The probe")
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="probe-work")
        self.finish = threading.Event()  # set by a test: running jobs complete
        self.cancelled_jobs = 0

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/v1/items", self.items, "probe.items"),
            Endpoint("POST", "/v1/small", self.items, "probe.small", max_body=16),
            Endpoint("GET", "/v1/boom", self.boom, "probe.boom"),
            Endpoint("GET", "/v1/public", self.public, "probe.public", public=True),
            Endpoint("POST", "/api/native", self.native, "probe.native", passthrough=True),
            Endpoint("GET", "/v1/headers", self.headers, "probe.headers", listed=False),
            Endpoint("GET", "/v1/forward", self.forward, "probe.forward"),
            Endpoint("GET", "/v1/stream", self.stream, "probe.stream", streaming=True),
            Endpoint("POST", "/v1/work", self.work, "probe.work"),
            Endpoint("GET", "/v1/events", self.events, "probe.events", streaming=True),
            Endpoint("POST", "/_test/block", self.block_loop, "probe.block"),
            Endpoint("GET", "/_test/slow", self.slow, "probe.slow"),
            # The same handlers in the other error formats (Anthropic's /v1/messages, Ollama's /api/*).
            Endpoint("POST", "/v1/messages", self.items, "probe.messages", max_body=64, errors="anthropic"),
            Endpoint("GET", "/v1/messages/boom", self.boom, "probe.messages_boom", errors="anthropic"),
            Endpoint("POST", "/api/items", self.items, "probe.api_items", max_body=64, errors="ollama"),
            Endpoint("GET", "/api/boom", self.boom, "probe.api_boom", errors="ollama"),
        ]

    def checks(self):
        return {"probe": self.check}

    async def check(self) -> str:
        if not self.healthy:
            raise RuntimeError("probe says no")
        return "fine"

    async def reload(self) -> None:
        self.reloads += 1

    async def items(self, request: web.Request) -> web.Response:
        item = await parse_json(request, Item)
        return web.json_response(item.model_dump())

    async def boom(self, request: web.Request) -> web.Response:
        raise RuntimeError("internal detail that must not reach the client")

    async def public(self, request: web.Request) -> web.Response:
        return web.json_response({"public": True})

    async def native(self, request: web.Request) -> web.Response:
        if request.query.get("missing"):
            raise web.HTTPNotFound(text="native not found")
        return web.json_response({"error": "native shape"}, status=400)

    async def headers(self, request: web.Request) -> web.Response:
        return web.json_response({
            "request_id": request.headers.get("X-Request-ID"),
            "token": request.headers.get("X-Nexus-Internal-Token"),
        })

    async def forward(self, request: web.Request) -> web.Response:
        async with self.runtime.http.get(self.runtime.base_url + "/v1/headers") as r:
            return web.json_response(await r.json())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write_eof()
        return resp

    async def stop(self) -> None:
        self.finish.set()
        self.executor.shutdown(wait=True)

    async def work(self, request: web.Request) -> web.Response:
        cancel = threading.Event()

        def job() -> str:  # a worker-thread job that checks its cancel flag at every step
            while not self.finish.wait(0.01):
                if cancel.is_set():
                    self.cancelled_jobs += 1
                    return "cancelled"
            return "done"

        return web.json_response({"result": await self.gate.run(self.executor, job, cancel)})

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = await sse.start(request)
        await resp.write(sse.event({"n": 1}))
        await resp.write(sse.event({"n": 2}, name="tick"))
        fmt = request.query.get("fmt", "openai")
        await resp.write(sse.error_event(ApiError(502, "upstream went away", code="upstream_disconnected"), fmt))
        await resp.write(sse.DONE)
        await resp.write_eof()
        return resp

    async def block_loop(self, request: web.Request) -> web.Response:
        seconds = float(request.query.get("seconds", "5"))
        time.sleep(seconds)  # deliberately blocks the loop: the watchdog must notice
        return web.json_response({"blocked": seconds})

    async def slow(self, request: web.Request) -> web.Response:
        seconds = float(request.query.get("seconds", "2"))
        await asyncio.sleep(seconds)
        return web.json_response({"slept": seconds})


if __name__ == "__main__":
    from nexusd.runtime.server import main

    sys.exit(main(ProbeService))
