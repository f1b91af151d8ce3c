"""Request bodies: JSON only, validated by a pydantic model, errors as 400/415 envelopes with
`param` naming the field (as OpenAI does)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from nexusd.runtime.errors import ApiError

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            f"Content-Type must be application/json, got {request.content_type or 'none'}",
            code="unsupported_media_type",
        )
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from None


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
