"""API-key check for the API listener (8800): every route but /health and the capability URLs
of generated files needs `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's
clients send it). It runs before routing decides
anything, so an unknown route without a key is 401, not 404. The key's id goes into the request
for scope checks, quotas (quotas.py) and metrics; the key itself is never logged nor forwarded.

Failed authentications are throttled per client address: once an address has spent its
allowance of failures (NEXUS_GATEWAY_AUTH_FAILURES_PER_MINUTE), its requests with a header not
already verified get 429 before any hashing, so guessing is slow and a flood of bad keys costs
one dict lookup each."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.keys import ApiKey, KeyStore
from nexusd.services.gateway.ratelimit import Network, RateLimiter, client_address, retry_after

API_KEY = web.RequestKey("api_key", ApiKey)


def make_auth_check(keys: KeyStore, on_reject: Callable[[str], None], *,
                    failures_per_minute: int = 30,
                    trusted_proxies: list[Network] | None = None) -> Callable[[web.Request], None]:
    """The check the runtime runs before every handler of the API listener (`Service.guard`),
    unknown routes included; it skips /health and `public` endpoints (capability URLs)."""
    failures = RateLimiter(max_entries=65536)
    trusted = trusted_proxies or []

    def auth_check(request: web.Request) -> None:
        now = time.time()
        authorization = request.headers.get("Authorization")
        if authorization is None and "x-api-key" in request.headers:  # Anthropic clients' header, same keys
            authorization = "Bearer " + request.headers["x-api-key"]
        address = None
        if not keys.is_verified(authorization):
            address = client_address(request, trusted)
            wait = failures.empty(address, now)
            if wait:
                on_reject("auth_throttled")
                raise ApiError(429, "Too many failed authentications from this address",
                               code="rate_limit_exceeded", headers={"Retry-After": retry_after(wait)})
        key, why = keys.authenticate(authorization, now)
        if key is None:
            if address is not None:
                failures.take(address, failures_per_minute, now)
            on_reject("invalid_key")
            raise ApiError(401, why, code="invalid_api_key",
                           headers={"WWW-Authenticate": 'Bearer realm="nexusd"'})
        request[API_KEY] = key

    return auth_check
