"""API-key check for the API listener (8800): every route but /health and the capability URLs
of generated files needs `Authorization: Bearer <key>`. It runs before routing decides
anything, so an unknown route without a key is 401, not 404. The key's id goes into the request
for scope checks and metrics; the key itself is never logged nor forwarded."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.keys import ApiKey, KeyStore
from nexusd.services.gateway.ratelimit import RateLimiter, retry_after

API_KEY = web.RequestKey("api_key", ApiKey)


def make_auth_check(keys: KeyStore, limiter: RateLimiter,
                    on_reject: Callable[[str], None]) -> Callable[[web.Request], None]:
    """The check the runtime runs before every handler of the API listener (`Service.guard`),
    unknown routes included; it skips /health and `public` endpoints (capability URLs)."""

    def auth_check(request: web.Request) -> None:
        now = time.time()
        key, why = keys.authenticate(request.headers.get("Authorization"), now)
        if key is None:
            on_reject("invalid_key")
            raise ApiError(401, why, code="invalid_api_key",
                           headers={"WWW-Authenticate": 'Bearer realm="nexusd"'})
        if key.rpm is not None:
            wait = limiter.take(key.id, key.rpm, now)
            if wait:
                on_reject("rate_limited")
                raise ApiError(429, f"Rate limit of {key.rpm} requests per minute reached for this key",
                               code="rate_limit_exceeded", headers={"Retry-After": retry_after(wait)})
        request[API_KEY] = key

    return auth_check
