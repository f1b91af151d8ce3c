"""The Responses store: what `store: true` keeps for `previous_response_id`, `GET` and `DELETE
/v1/responses/{id}`. In this gateway's memory only, bounded by count, bytes and age, and scoped
per API key (a key never reads another key's responses: the key id is part of the lookup).

Several gateways do not share it: a follow-up must reach the gateway that answered (docs/
gateway.md, "Responses and multiple gateways"); elsewhere it is a 404 that says so.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.chatstream import dumps


@dataclass(slots=True)
class Stored:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # chat messages up to and including this answer
    size: int
    expires: float


class ResponseStore:
    def __init__(self, max_count: int, max_bytes: int, ttl: float) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.items: OrderedDict[tuple[str, str], Stored] = OrderedDict()  # oldest first
        self.bytes = 0

    def put(self, key_id: str, response: dict[str, Any], conversation: list[dict[str, Any]],
            now: float | None = None, size: int | None = None) -> bool:
        """Keep it (evicting the oldest to make room); False when it alone exceeds the bytes bound.
        `size`: its encoded size when the caller has it (else encoded here)."""
        now = time.monotonic() if now is None else now
        if size is None:
            size = len(dumps(response)) + len(dumps(conversation))
        if size > self.max_bytes or self.max_count == 0:
            return False
        self._drop((key_id, response["id"]))
        self._expire(now)
        while self.items and (len(self.items) >= self.max_count or self.bytes + size > self.max_bytes):
            self._drop(next(iter(self.items)))
        self.items[(key_id, response["id"])] = Stored(response, conversation, size, now + self.ttl)
        self.bytes += size
        return True

    def get(self, key_id: str, response_id: str, now: float | None = None) -> Stored:
        now = time.monotonic() if now is None else now
        entry = self.items.get((key_id, response_id))
        if entry is not None and entry.expires <= now:
            self._drop((key_id, response_id))
            entry = None
        if entry is None:
            raise not_found(response_id)
        return entry

    def delete(self, key_id: str, response_id: str, now: float | None = None) -> None:
        self.get(key_id, response_id, now)
        self._drop((key_id, response_id))

    def _expire(self, now: float) -> None:
        while self.items:
            k, entry = next(iter(self.items.items()))
            if entry.expires > now:
                return
            self._drop(k)

    def _drop(self, k: tuple[str, str]) -> None:
        entry = self.items.pop(k, None)
        if entry is not None:
            self.bytes -= entry.size


def not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response '{response_id[:64]}' not found. Conversations (store / previous_response_id) "
                         "are kept in memory, per API key and for a bounded time, by the gateway that answered: "
                         "send follow-ups to that gateway, or resend the whole conversation as input",
                    param="previous_response_id", code="response_not_found")
