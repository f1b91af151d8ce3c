"""Routes that exist only with NEXUS_TEST_HOOKS=1, for tests that need a misbehaving service:
a blocked event loop (watchdog tests) and a slow request (drain tests). Never enable in production."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web


async def block_loop(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "5"))
    time.sleep(seconds)  # deliberately blocks the loop: the watchdog must notice
    return web.json_response({"blocked": seconds})


async def slow(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "2"))
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})
