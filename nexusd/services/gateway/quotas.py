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

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nexusd.runtime import ApiError
from nexusd.services.gateway.auth import API_KEY
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.quotashare import MINUTE, QuotaShare
from nexusd.services.gateway.ratelimit import retry_after

DEFAULT_MAX_TOKENS = 256
BYTES_PER_TOKEN = 4
_MAX_TOKENS = re.compile(rb'"(max_completion_tokens|max_tokens|n)"\s*:\s*(\d+)')
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def estimate(body: bytes) -> int:
    """Found with a regex, not a parse (the body was validated as JSON already): the request
    path pays a few µs, not a second json.loads. max_completion_tokens wins over max_tokens;
    `n` choices each may use them all."""
    limit = completion = 0
    n = 1
    for name, value in _MAX_TOKENS.findall(body):  # (the last of a repeated field wins, as in JSON)
        if name == b"max_tokens":
            limit = int(value)
        elif name == b"n":
            n = int(value) or 1
        else:
            completion = int(value)
    return len(body) // BYTES_PER_TOKEN + (completion or limit or DEFAULT_MAX_TOKENS) * n


class Held:
    """A limited key's request, in one request slot: the key's sliding-minute use as its
    admission and reservation left it (its x-ratelimit headers say that, as OpenAI's do, without
    a second count) and the tokens it holds."""

    __slots__ = ("requests", "tokens", "reserved", "refused", "sent")

    def __init__(self, requests: float | None) -> None:
        self.requests = requests  # None: no rpm, not counted
        self.tokens: float | None = None  # None: nothing reserved (yet)
        self.reserved: int | None = None  # tokens held until settled; None: never reserved
        self.refused = False  # refused for tokens after its request was counted
        self.sent = False  # its x-ratelimit headers are in the answer already (answer_headers)


HELD = web.RequestKey("quota_held", Held)


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
            held = request[HELD] = self.admit(key)
            try:
                response = await handler(request)
            except ApiError as exc:
                self.finish(request, key, held, exc.status)
                exc.headers.update(self.headers(key, held, exc.headers.get("Retry-After")))
                raise
            except BaseException:
                self.finish(request, key, held, 499)  # the client went away
                raise
            self.finish(request, key, held, response.status)
            if not (response.prepared or held.sent):  # (a stream's went out with its start)
                response.headers.update(self.headers(key, held))
            return response

        return quota_guarded

    def admit(self, key: ApiKey) -> Held:
        """Requests per minute and in flight, over every gateway: 429 when over either."""
        wait, refused, requests = self.share.take_request(key.id, key.rpm, key.max_concurrent)
        if wait:
            why = (f"Rate limit of {key.rpm} requests per minute reached for this key" if refused == "requests"
                   else f"Limit of {key.max_concurrent} concurrent requests reached for this key")
            raise ApiError(429, why, code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after(wait), **self.headers(key, None, retry_after(wait))})
        return Held(requests)

    def finish(self, request: web.Request, key: ApiKey, held: Held, status: int) -> None:
        self.share.enter(key.id, -1)
        if key.budget is not None and self.ledger is not None:
            self.ledger.release(request)
        if status >= 400:
            if held.reserved:  # an error: its tokens are given back
                self.share.add(key.id, tokens=-held.reserved)
                held.reserved = 0
            if held.refused:  # refused for tokens: not a request the key made use of
                self.share.add(key.id, requests=-1)

    # --- tokens ------------------------------------------------------------------------
    def reserve(self, request: web.Request, key: ApiKey, body: bytes | Any) -> None:
        """Once per request (a fallback chain forwards again): 429 when the estimate does not fit."""
        if key.budget is not None and self.ledger is not None:  # 429 past the key's --budget (ledger.py)
            self.ledger.admit(request, key, estimate(body) if isinstance(body, bytes) else DEFAULT_MAX_TOKENS)
        tpm = key.tpm
        if not tpm:
            return
        held = request[HELD]
        if held.reserved is not None:
            return
        reserve = estimate(body) if isinstance(body, bytes) else DEFAULT_MAX_TOKENS
        wait, tokens = self.share.take_tokens(key.id, tpm, reserve)
        if wait:
            held.refused = True
            raise ApiError(429, f"Token limit of {tpm} tokens per minute reached for this key",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after(wait), **self.headers(key, None, retry_after(wait))})
        held.reserved, held.tokens = reserve, tokens

    def settle(self, request: web.Request, key: ApiKey, usage: dict[bytes, bytes] | None, failed: bool,
               model: str = "") -> None:
        if self.ledger is not None:  # every key: the usage ledger (ledger.py)
            self.ledger.settle(request, key, model, usage, failed)
        if not key.tpm or not (failed or usage):
            return  # no token limit, or no usage yet (a stream's comes at its end): it stands
        held = request[HELD]
        reserved = held.reserved
        if not reserved:
            return
        held.reserved = 0
        actual = 0
        if usage and not failed:
            actual = int(usage.get(b"total_tokens") or 0) or (
                int(usage.get(b"prompt_tokens") or 0) + int(usage.get(b"completion_tokens") or 0))
        self.share.add(key.id, tokens=actual - reserved)
        if held.tokens is not None:
            held.tokens += actual - reserved

    # --- what clients and operators see ------------------------------------------------
    def headers(self, key: ApiKey, held: Held | None = None, wait: str | None = None) -> dict[str, str]:
        """OpenAI's x-ratelimit-* trios for the limits the key has; {} for an unlimited key.
        The use is the one `held` (the request's) counted, else counted now. `wait`: a
        refusal's Retry-After, which is then the reset of the limit that refused."""
        rpm, tpm = key.rpm, key.tpm
        if not (rpm or tpm):
            return {}
        share = self.share
        requests, tokens = (held.requests, held.tokens) if held is not None else (None, None)
        if (rpm and requests is None) or (tpm and tokens is None):
            live = share.used(key.id)  # a refusal, or a request that reserved no tokens (no upstream)
            requests = live[0] if requests is None else requests
            tokens = live[1] if tokens is None else tokens
        out: dict[str, str] = {}
        if rpm:
            _trio(out, _REQUESTS, rpm, share.share(rpm), requests, wait)  # type: ignore[arg-type]
        if tpm:
            _trio(out, _TOKENS, tpm, share.share(tpm), tokens, wait)  # type: ignore[arg-type]
        return out

    def answer_headers(self, request: web.Request, key: ApiKey) -> dict[str, str]:
        """headers() for the handler to put in its answer itself — a stream's, sent before the
        guard sees the answer, or a relayed one's, built with them rather than added after."""
        if not (key.rpm or key.tpm):
            return {}
        held = request[HELD]
        held.sent = True
        return self.headers(key, held)

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


_REQUESTS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
_TOKENS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
_RESETS = [f"{seconds}s" for seconds in range(2 * int(MINUTE) + 1)]  # capped at two minutes


def _trio(out: dict[str, str], names: tuple[str, str, str], limit: int, allowed: float, used: float,
          wait: str | None) -> None:
    """limit, remaining (of the part this gateway may admit), and the time until the sliding
    minute has drained what is used (or the refusal's wait). Plain arithmetic: it runs for every
    answer of a limited key (bench/gateway's gateway-limited)."""
    remaining = int(allowed - used) if allowed > used else 0  # floor, for the non-negative
    if wait and remaining < 1:
        reset = wait + "s"
    else:
        reset = _RESETS[min(math.ceil(used * MINUTE / limit), len(_RESETS) - 1)] if used > 0 else "0s"
    out[names[0]], out[names[1]], out[names[2]] = str(limit), str(remaining), reset
