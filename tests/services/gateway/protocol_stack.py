"""A gateway and the OpenAI-shaped backend double for the Responses / Messages route tests:
the double records each chat request body it gets, so a test can see what the translation sent.
(The double is a test double of an LLM service; the gateway and both clients are real.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from nexusd.runtime.server import Server
from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import make_keys, routable, serve, serve_gateway

KEYS = {
    "admin": {},
    "chat-only": {"operations": frozenset({"chat.completions"})},
    "responses-only": {"operations": frozenset({"responses.create"})},
    "messages-only": {"operations": frozenset({"messages.create"}), "models": frozenset({"claude-sonnet-4-5"})},
    "slow": {"rpm": 1},
}
ALIASES = '[aliases]\n"claude-sonnet-4-5" = "tiny-chat"\n"gpt-5" = "tiny-chat"\n'


class RecordingDouble(OpenAIDouble):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chats: list[dict[str, Any]] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.chats.append(await request.json())
        return await super().chat(request)


@contextlib.asynccontextmanager
async def protocol_stack(tmp_path: Path, upstreams: str = ALIASES) -> AsyncIterator[tuple[Server, Server, dict]]:
    keys = make_keys(tmp_path / "api-keys", KEYS)
    (tmp_path / "upstreams.toml").write_text(upstreams)
    shared = SharedSettings(etcd_endpoints="", internal_token="")
    async with serve(RecordingDouble, shared) as backend, \
            serve_gateway(tmp_path / "api-keys", {"testai": backend.url}, shared=shared,
                          upstreams=tmp_path / "upstreams.toml") as gw:
        async def ready() -> bool:
            return routable(gw, "chat.completions")
        await async_wait_for(ready, timeout=10, what="backend routable")
        yield gw, backend, keys
