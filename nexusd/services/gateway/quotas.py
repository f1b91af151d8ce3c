"""Per-key token quotas (`--tpm`) at the proxy: reserve at admission, settle with the usage the
answer reports, refuse over the limit with 429 and OpenAI's x-ratelimit-*-tokens headers.

The counts are a QuotaShare (quotashare.py): with etcd, the sum over every gateway; without,
this gateway's. A key without `tpm` costs one attribute read per request and nothing else.

Reservation = an estimate of the prompt (request bytes / 4) + `max_tokens` (or
`max_completion_tokens`; DEFAULT_MAX_TOKENS when absent). Settled to the answer's
`total_tokens` (prompt + completion when absent); released when the answer is an error. A
stream whose upstream sends no usage keeps its whole reservation (it can only over-count).
"""

from __future__ import annotations

import math
import re
from typing import Any

from aiohttp import web

from nexusd.runtime import ApiError
from nexusd.services.gateway.keys import ApiKey
from nexusd.services.gateway.quotashare import MINUTE, QuotaShare
from nexusd.services.gateway.ratelimit import retry_after

RESERVED = "nexus.quota.reserved"  # request key: tokens this request holds
DEFAULT_MAX_TOKENS = 256
BYTES_PER_TOKEN = 4
_MAX_TOKENS = re.compile(rb'"(max_completion_tokens|max_tokens)"\s*:\s*(\d+)')


def estimate(body: bytes) -> int:
    """Found with a regex, not a parse (the body was validated as JSON already): the request
    path pays a few µs, not a second json.loads. max_completion_tokens wins over max_tokens."""
    found = dict(_MAX_TOKENS.findall(body))
    limit = int(found.get(b"max_completion_tokens") or found.get(b"max_tokens") or 0)
    return len(body) // BYTES_PER_TOKEN + (limit or DEFAULT_MAX_TOKENS)


class Quotas:
    def __init__(self, share: QuotaShare | None = None) -> None:
        self.share = share or QuotaShare("local")

    def admit(self, request: web.Request, key: ApiKey, body: bytes) -> None:
        tpm = key.tpm
        if not tpm:
            return
        reserve = estimate(body)
        wait = self.share.check(key.id, None, tpm, reserve)
        if wait:
            raise ApiError(429, f"Token limit of {tpm} tokens per minute reached for this key",
                           code="rate_limit_exceeded",
                           headers={"Retry-After": retry_after(wait), **self.headers(key, wait)})
        self.share.add(key.id, requests=1, tokens=reserve)
        request[RESERVED] = reserve

    def settle(self, request: web.Request, key: ApiKey, usage: dict[bytes, bytes] | None, failed: bool) -> None:
        reserved = request.get(RESERVED)
        if not reserved or not (failed or usage):
            return  # nothing held, or no usage yet (a stream's comes at its end): it stands
        request[RESERVED] = 0
        actual = 0
        if usage and not failed:
            actual = int(usage.get(b"total_tokens") or 0) or (
                int(usage.get(b"prompt_tokens") or 0) + int(usage.get(b"completion_tokens") or 0))
        self.share.add(key.id, tokens=actual - reserved)

    def headers(self, key: ApiKey, wait: float = 0.0) -> dict[str, str]:
        """OpenAI's x-ratelimit-*-tokens trio for a key with a token limit; {} otherwise."""
        tpm = key.tpm
        if not tpm:
            return {}
        used = self.share.used(key.id)[1]
        limit = self.share.share(tpm)
        reset = wait or max(0.0, used) * MINUTE / tpm
        return {"x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-tokens": str(max(0, math.floor(limit - used))),
                "x-ratelimit-reset-tokens": f"{math.ceil(min(reset, 2 * MINUTE))}s"}

    def report(self) -> dict[str, Any]:
        """For /v1/metadata: whether the counts are shared, over how many gateways."""
        share = self.share
        return {"shared": share.shared, "connected": share.connected,
                "gateways": share.gateways_seen, "period": share.period, "etcd_writes": share.writes}
