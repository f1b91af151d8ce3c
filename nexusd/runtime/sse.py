"""Server-sent events: the one place that frames them.

    resp = await sse.start(request)                 # text/event-stream, not buffered by proxies
    await resp.write(sse.event({"choices": ...}))   # data: {...}\\n\\n
    await resp.write(sse.DONE)                      # OpenAI's end marker
    await resp.write(sse.error_event(exc, "openai"))  # a failure after the headers went out

Once a stream has started, a failure can only be told in-band: `error_event` writes it in the
route's error format (the same document the route answers errors with, see errors.py).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from nexusd.runtime.errors import ApiError, ErrorFormat

DONE = b"data: [DONE]\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx in front must not buffer events
}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def event(doc: Any, name: str | None = None) -> bytes:
    """One event: `data: <compact JSON>`, preceded by `event: <name>` when named."""
    data = b"data: " + _dumps(doc).encode() + b"\n\n"
    return b"event: " + name.encode() + b"\n" + data if name else data


def error_event(error: ApiError, fmt: ErrorFormat = "openai", *, typed: bool = False) -> bytes:
    """The error as an event. OpenAI: `data: {"error": {...}}` (what its clients raise on), or
    with `typed` — streams whose events carry a `type`, such as speech — `{"type": "error",
    "error": {...}}`. Anthropic: `event: error` with its error document. Ollama streams are
    NDJSON, not SSE: its error document on one line."""
    if fmt == "anthropic":
        return event(error.body("anthropic"), "error")
    if fmt == "ollama":
        return _dumps(error.body("ollama")).encode() + b"\n"
    body = error.envelope()
    return event({"type": "error", **body} if typed else body)


async def start(request: web.Request, status: int = 200, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Send the headers of an event stream; write events to the returned response."""
    resp = web.StreamResponse(status=status, headers={**HEADERS, **(headers or {})})
    await resp.prepare(request)
    return resp
