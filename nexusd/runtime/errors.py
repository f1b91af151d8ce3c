"""Errors as the client's protocol expects them. Every route names its error format
(`Endpoint.errors`), and the runtime's per-route handling (`pipeline.RequestPipeline`) renders
every failure of that route in it: the handler's `ApiError`s, the guard's 401/403/429,
validation's 400/415, aiohttp's 404/405/413 and unexpected exceptions (500).

- "openai" (default): `{"error": {"message", "type", "param", "code"}}`;
- "anthropic" (`/v1/messages`): `{"type": "error", "error": {"type", "message"}}`, with
  Anthropic's error type for the status;
- "ollama" (`/api/*`): `{"error": "message"}`.

Routes declared as pass-through keep their upstream's error shape for aiohttp's own exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

log = logging.getLogger("nexusd.errors")

ErrorFormat = Literal["openai", "anthropic", "ollama"]
ERROR_FORMATS: tuple[ErrorFormat, ...] = ("openai", "anthropic", "ollama")

# nginx's status for "the client closed the connection before the answer"; nobody reads the
# answer, the access log and metrics do. One code for every service.
CLIENT_CLOSED = 499
CLIENT_CLOSED_CODE = "client_closed_request"

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
# Anthropic's error "type" for each status (docs.anthropic.com, "Errors"); 503 is their
# overloaded_error (529), the closest meaning.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def anthropic_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


class ApiError(Exception):
    """An error the client should see. It carries OpenAI's fields (type, param, code); the
    route's error format decides which of them reach the client."""

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
        self.format: ErrorFormat | None = None  # set to override the route's format

    def envelope(self) -> dict[str, Any]:
        """The OpenAI envelope."""
        return error_body(self.message, self.type, self.param, self.code)

    def body(self, fmt: ErrorFormat = "openai") -> dict[str, Any]:
        """The error document in one of the formats."""
        if fmt == "anthropic":
            return {"type": "error", "error": {"type": anthropic_type(self.status), "message": self.message}}
        if fmt == "ollama":
            return {"error": self.message}
        return self.envelope()

    def response(self, fmt: ErrorFormat = "openai") -> web.Response:
        return web.json_response(self.body(fmt), status=self.status, headers=self.headers)


class ClientGone(ApiError):
    """The client disconnected before the answer: 499, code `client_closed_request`."""

    def __init__(self) -> None:
        super().__init__(CLIENT_CLOSED, "Client closed the request", code=CLIENT_CLOSED_CODE)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def renderer(fmt: ErrorFormat) -> Callable[[ApiError], web.Response]:
    """`ApiError` → response in one format, chosen once per route."""
    if fmt not in ERROR_FORMATS:
        raise ValueError(f"unknown error format {fmt!r}; one of {', '.join(ERROR_FORMATS)}")
    return lambda exc: exc.response(fmt)


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
