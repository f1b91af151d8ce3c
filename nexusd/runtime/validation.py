"""Request bodies: JSON only, validated by a pydantic model, errors as 400/415 envelopes with
`param` naming the field (as OpenAI does).

JSON nesting is bounded (MAX_DEPTH): Python's decoder recurses per level, so a body of a few
hundred kilobytes of `[` is a RecursionError, and anything deep that gets through costs every
later walk (validation, dumps) the same recursion. No API here takes more than a few levels."""

from __future__ import annotations

import asyncio
import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nexusd.runtime.errors import ApiError

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 64


def too_deep(data: Any, limit: int = MAX_DEPTH) -> bool:
    """True when containers nest deeper than `limit` (iterative: no recursion of our own)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def loads(raw: bytes | str) -> Any:
    """json.loads with bad input as 400 `invalid_json`, nesting depth included."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        data = None
        deep = True
    else:
        # A body with few brackets cannot nest deeply: counting them is C-fast, the walk is not.
        if isinstance(raw, bytes):
            brackets = raw.count(b"[") + raw.count(b"{")
        else:
            brackets = raw.count("[") + raw.count("{")
        deep = brackets > MAX_DEPTH and too_deep(data)
    if deep:
        raise ApiError(400, f"Request body is not valid JSON: nested deeper than {MAX_DEPTH} levels",
                       code="invalid_json")
    return data


BODY_TIMEOUT = 60.0  # seconds a client may take to send its body (the gateway's is a setting)


async def read_within(request: web.Request, timeout: float = BODY_TIMEOUT) -> bytes:
    """The whole body, or 408 when it does not arrive in time: aiohttp has no read timeout of
    its own, so a client sending a byte a second would hold a handler (and its memory) forever."""
    if request.content.is_eof():  # the usual small body came with the headers: no timer needed
        return await request.read()
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        if request.transport is not None:
            request.transport.pause_reading()  # answer, then drop it: the rest is not wanted
        raise ApiError(408, f"Request body not received within {timeout:g}s", code="request_timeout",
                       headers={"Connection": "close"}) from None


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {request.content_type or 'none'}",
            code="unsupported_media_type",
        )
    return loads(await read_within(request))


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"]
        if param:
            msg = f"{param}: {msg}"
        code = "missing_required_parameter" if err["type"] == "missing" else "invalid_value"
        raise ApiError(400, msg, param=param, code=code) from None


async def parse_json(request: web.Request, model: type[M]) -> M:
    """Read, decode and validate the body; raises ApiError (400/413/415) on failure."""
    data = await read_json(request)
    if not isinstance(data, dict):
        raise ApiError(400, "Request body must be a JSON object", code="invalid_json")
    return validate(model, data)
