"""Per-key quotas at the gateway (issue 18): `rpm` (requests per minute), `tpm` (tokens per
minute) and `max_concurrent` (requests in flight), each summed over every gateway through a
QuotaShare (quotashare.py: etcd-shared, or this gateway's own counts without etcd).

`guard()` wraps every API handler: a key with a limit is admitted (rpm, max_concurrent) before
the handler runs, its in-flight count is released when the handler ends (answer sent, stream
ended, client gone), and every answer it gets — success, stream, error, 429 — carries OpenAI's
x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the limits it has. A key without
limits costs three attribute reads per request and nothing else.

Tokens are reserved when the request is forwarded (`reserve`, once per request, whatever the
route): an estimate of the prompt (request bytes / 4) + `max_tokens` (or
`max_completion_tokens`; DEFAULT_MAX_TOKENS when absent or for a multipart upload) × `n`, settled to
the answer's `total_tokens` (prompt + completion when absent), released when the answer is an
error. An answer without usage (an image, speech, a stream whose upstream sent none) keeps its
whole reservation: it can only over-count.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nexusd.runtime import ApiError
from nexusd.services.gateway.auth import API_KEY
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.quotashare import MINUTE, QuotaShare
from nexusd.services.gateway.ratelimit import retry_after

RESERVED = web.RequestKey("quota_reserved", int)  # tokens this request holds
REFUSED = web.RequestKey("quota_refused", bool)  # refused for tokens after its request was counted
DEFAULT_MAX_TOKENS = 256
BYTES_PER_TOKEN = 4
_MAX_TOKENS = re.compile(rb'"(max_completion_tokens|max_tokens|n)"\s*:\s*(\d+)')
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def estimate(body: bytes) -> int:
    """Found with a regex, not a parse (the body was validated as JSON already): the request
    path pays a few µs, not a second json.loads. max_completion_tokens wins over max_tokens;
    `n` choices each may use them all."""
    found = dict(_MAX_TOKENS.findall(body))
    limit = int(found.get(b"max_completion_tokens") or found.get(b"max_tokens") or 0)
    return len(body) // BYTES_PER_TOKEN + (limit or DEFAULT_MAX_TOKENS) * max(1, int(found.get(b"n") or 1))


def limited(key: ApiKey | None) -> bool:
    return key is not None and bool(key.rpm or key.tpm or key.max_concurrent)


class Quotas:
    def __init__(self, share: QuotaShare | None = None) -> None:
        self.share = share or QuotaShare("local")
        self.ledger: Any = None  # the usage ledger and budgets (ledger.py), set by the gateway

    # --- around every handler ----------------------------------------------------------
    def guard(self, handler: Handler) -> Handler:
        """`handler`, with the key's request limits admitted before it and released after."""

        async def quota_guarded(request: web.Request) -> web.StreamResponse:
            key = request.get(API_KEY)
            if key is None or not (key.rpm or key.tpm or key.max_concurrent):
                if key is None or key.budget is None or self.ledger is None:
                    return await handler(request)
                try:  # a budget only: its reservation ends with the request (ledger.py)
                    return await handler(request)
                finally:
                    self.ledger.release(request)
            self.admit(request, key)
            try:
                response = await handler(request)
            except ApiError as exc:
                self.finish(request, key, exc.status)
                exc.headers.update(self.headers(key, exc.headers.get("Retry-After")))
                raise
            except BaseException:
                self.finish(request, key, 499)  # the client went away
                raise
            self.finish(request, key, response.status)
            if not response.prepared:  # a stream's headers were sent with the quota's already
                response.headers.update(self.headers(key))
            return response

        return quota_guarded

    def admit(self, request: web.Request, key: ApiKey) -> None:
        """Requests per minute and in flight, over every gateway: 429 when over either."""
        share, rpm, most = self.share, key.rpm, key.max_concurrent
        wait, why = 0.0, ""
        if rpm:
            wait = share.check(key.id, rpm, None, 0)
            why = f"Rate limit of {rpm} requests per minute reached for this key"
        if not wait and most and share.inflight(key.id) + 1 > share.share(most):
            wait, why = 1.0, f"Limit of {most} concurrent requests reached for this key"
        if wait:
            raise ApiError(429, why, code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after(wait), **self.headers(key, retry_after(wait))})
        share.admitted(key.id)  # +1 request in the minute, +1 in flight

    def finish(self, request: web.Request, key: ApiKey, status: int) -> None:
        self.share.enter(key.id, -1)
        if self.ledger is not None:
            self.ledger.release(request)
        if status >= 400:  # (request.get is Mapping.get in Python: only on failures)
            if request.get(RESERVED):
                self.settle(request, key, None, failed=True)
            if request.get(REFUSED):  # refused for tokens: not a request the key made use of
                self.share.add(key.id, requests=-1)

    # --- tokens ------------------------------------------------------------------------
    def reserve(self, request: web.Request, key: ApiKey, body: bytes | Any) -> None:
        """Once per request (a fallback chain forwards again): 429 when the estimate does not fit."""
        if key.budget is not None and self.ledger is not None:  # 429 past the key's --budget (ledger.py)
            self.ledger.admit(request, key, estimate(body) if isinstance(body, bytes) else DEFAULT_MAX_TOKENS)
        tpm = key.tpm
        if not tpm or RESERVED in request:
            return
        reserve = estimate(body) if isinstance(body, bytes) else DEFAULT_MAX_TOKENS
        wait = self.share.check(key.id, None, tpm, reserve)
        if wait:
            request[REFUSED] = True
            raise ApiError(429, f"Token limit of {tpm} tokens per minute reached for this key",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after(wait), **self.headers(key, retry_after(wait))})
        self.share.add(key.id, tokens=reserve)
        request[RESERVED] = reserve

    def settle(self, request: web.Request, key: ApiKey, usage: dict[bytes, bytes] | None, failed: bool,
               model: str = "") -> None:
        if self.ledger is not None:  # every key: the usage ledger (ledger.py)
            self.ledger.settle(request, key, model, usage, failed)
        reserved = request.get(RESERVED)
        if not reserved or not (failed or usage):
            return  # nothing held, or no usage yet (a stream's comes at its end): it stands
        request[RESERVED] = 0
        actual = 0
        if usage and not failed:
            actual = int(usage.get(b"total_tokens") or 0) or (
                int(usage.get(b"prompt_tokens") or 0) + int(usage.get(b"completion_tokens") or 0))
        self.share.add(key.id, tokens=actual - reserved)

    # --- what clients and operators see ------------------------------------------------
    def headers(self, key: ApiKey, wait: str | None = None) -> dict[str, str]:
        """OpenAI's x-ratelimit-* trios for the limits the key has; {} for an unlimited key.
        `wait`: a refusal's Retry-After, which is then the reset of the limit that refused."""
        rpm, tpm = key.rpm, key.tpm
        if not (rpm or tpm):
            return {}
        share = self.share
        requests, tokens = share.used(key.id)
        out: dict[str, str] = {}
        if rpm:
            _trio(out, "requests", rpm, share.share(rpm), requests, wait)
        if tpm:
            _trio(out, "tokens", tpm, share.share(tpm), tokens, wait)
        return out

    def report(self) -> dict[str, Any]:
        """For /v1/metadata: whether the counts are shared, over how many gateways, and each
        key's global view (key ids are public; requests and tokens in the sliding minute)."""
        share = self.share
        keys = {}
        for key_id in set(share.own) | set(share.others):
            requests, tokens = share.used(key_id)
            keys[key_id] = {"requests": round(requests, 2), "tokens": round(tokens, 2),
                            "inflight": share.inflight(key_id)}
        return {"shared": share.shared, "connected": share.connected, "gateways": share.gateways_seen,
                "period": share.period, "etcd_writes": share.writes, "keys": keys}


_NAMES = {unit: (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}", f"x-ratelimit-reset-{unit}")
          for unit in ("requests", "tokens")}


def _trio(out: dict[str, str], unit: str, limit: int, allowed: float, used: float, wait: str | None) -> None:
    """limit, remaining (of the part this gateway may admit), and the time until the sliding
    minute has drained what is used (or the refusal's wait). Plain arithmetic: it runs for every
    answer of a limited key (bench/gateway's gateway-limited target)."""
    names = _NAMES[unit]
    remaining = int(allowed - used) if allowed > used else 0  # floor, for the non-negative
    if wait and remaining < 1:
        reset = wait
    else:
        drain = used * MINUTE / limit if used > 0 else 0.0
        reset = str(min(int(-(-drain // 1)), 2 * int(MINUTE)))  # ceil, capped at two minutes
    out[names[0]], out[names[1]], out[names[2]] = str(limit), str(remaining), reset + "s"
