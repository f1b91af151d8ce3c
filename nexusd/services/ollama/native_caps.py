"""The service's caps on Ollama's native generation routes (`/api/chat`, `/api/generate`):
`options.num_predict` (tokens to generate) is capped at NEXUS_OLLAMA_MAX_TOKENS, and
`options.num_ctx` at NEXUS_OLLAMA_CONTEXT when that is set, as the OpenAI routes are. Without
this, a native request could ask for unbounded generation (`num_predict: -1`) or a context
that does not fit the host. Errors are in Ollama's shape ({"error": ...}), as on every /api/*."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.runtime.validation import loads, read_within

CAPPED_ROUTES = frozenset({"/api/chat", "/api/generate"})


def cap_options(doc: dict[str, Any], max_tokens: int, context: int) -> dict[str, Any]:
    options = doc.get("options")
    options = dict(options) if isinstance(options, dict) else {}
    predict = options.get("num_predict")
    # absent, -1 (no limit) and -2 (fill the context) all mean "as many as allowed"
    if not isinstance(predict, int) or isinstance(predict, bool) or predict < 0 or predict > max_tokens:
        options["num_predict"] = max_tokens
    ctx = options.get("num_ctx")
    if context and isinstance(ctx, int | float) and ctx > context:
        options["num_ctx"] = context
    return {**doc, "options": options}


async def capped_body(request: web.Request, max_tokens: int, context: int) -> bytes | web.Response:
    """The request's body with the caps applied, or an Ollama-shaped 400/413 to answer with."""
    try:
        doc = loads(await read_within(request))  # bounded in time and nesting, as every body
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "request body too large"}, status=413)
    except ApiError as exc:
        return web.json_response({"error": exc.message}, status=exc.status, headers=exc.headers)
    if not isinstance(doc, dict):
        return web.json_response({"error": "request body must be a JSON object"}, status=400)
    return json.dumps(cap_options(doc, max_tokens, context)).encode()
