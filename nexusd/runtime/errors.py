"""Every failure as an OpenAI error envelope: {"error": {"message", "type", "param", "code"}}.

Handlers raise `ApiError`; aiohttp's own HTTP exceptions (404, 405, 413, ...) and unhandled
exceptions are converted by the runtime's per-route handling (`pipeline.RequestPipeline`). Routes declared as pass-through (the Ollama
wrapper's native `/api/*`) keep their upstream's error shape and are left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("nexusd.errors")

# OpenAI's error "type" for each status (see the openai-python client's APIStatusError classes).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error the client should see, already in OpenAI's terms."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> web.Response:
        return web.json_response(self.envelope(), status=self.status, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_http_exception(exc: web.HTTPException) -> ApiError:
    status = exc.status
    message = exc.reason
    if status == 404:
        message = "Unknown route"
    elif status == 405:
        message = f"Method not allowed; allowed: {', '.join(sorted(getattr(exc, 'allowed_methods', ())))}"
    elif status == 413:
        message = "Request body too large"
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    return ApiError(status, message, code=_CODES.get(status), headers=headers)

