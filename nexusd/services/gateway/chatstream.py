"""What the two protocol translations (responses.py, messages.py) share: reading a chat
completions SSE stream into chunk objects, the JSON codec of the re-encoding hot path, and the
checks that refuse what cannot be honoured with a 400 naming the field.

The codec: every streamed chat chunk is decoded and every protocol event encoded, so this is
where translation costs CPU (bench/gateway's `responses-sse50`/`messages-sse50` workloads,
bench/protocol_codec.py for the codecs side by side).
"""

from __future__ import annotations

from typing import Any

import orjson

from nexusd.runtime.errors import ApiError

# The codec of the hot path: orjson decodes and encodes about 3x faster than the stdlib here
# (bench/protocol_codec.py; docs/dependencies.md). Both give the same objects and bytes.
loads = orjson.loads
dumps = orjson.dumps


MAX_EVENT = 1 << 20  # bytes of one upstream SSE event (a chat chunk is a few hundred)


class ChatStreamReader:
    """Splits a chat completions SSE byte stream into decoded chunk objects. `feed` takes the
    bytes as they arrive (events may be cut anywhere); `done` is set after `data: [DONE]`."""

    __slots__ = ("buffer", "done")

    def __init__(self) -> None:
        self.buffer = b""
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        buffer = self.buffer + data if self.buffer else data
        if b"\r" in buffer:  # sse-starlette (llama_cpp.server) ends lines with CRLF
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            event = buffer[start:end]
            start = end + 2
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue  # comments (": ping"), event:/id: lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    continue
                try:
                    chunk = loads(payload)
                except ValueError:
                    continue  # a backend's malformed event: nothing we could translate
                if isinstance(chunk, dict):
                    chunks.append(chunk)
        self.buffer = buffer[start:]
        if len(self.buffer) > MAX_EVENT:
            raise ApiError(502, f"Upstream sent an event larger than {MAX_EVENT} bytes", code="upstream_too_large")
        return chunks


def check_chat(doc: dict[str, Any], part: str) -> None:
    """A 502 unless `doc` has the shape of a chat answer (`part` "message") or chunk ("delta")
    as far as the translations read it: an upstream's answer crosses a process boundary."""
    choices = doc.get("choices")
    if choices is not None:
        if not isinstance(choices, list):
            raise bad_answer("choices")
        for choice in choices:
            if not isinstance(choice, dict) or not _opt(choice.get("finish_reason"), str):
                raise bad_answer("choices[]")
            message = choice.get(part)
            if message is None:
                continue
            if not isinstance(message, dict) or not _opt(message.get("content"), str):
                raise bad_answer(part)
            calls = message.get("tool_calls")
            if calls is not None and not (isinstance(calls, list) and all(map(_tool_call, calls))):
                raise bad_answer(f"{part}.tool_calls")
    usage = doc.get("usage")
    if usage is not None and not (isinstance(usage, dict) and _opt(usage.get("prompt_tokens"), int)
                                  and _opt(usage.get("completion_tokens"), int)):
        raise bad_answer("usage")


def _opt(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def _tool_call(call: Any) -> bool:
    if not isinstance(call, dict) or not _opt(call.get("index"), int) or not _opt(call.get("id"), str):
        return False
    fn = call.get("function")
    return fn is None or (isinstance(fn, dict) and _opt(fn.get("name"), str) and _opt(fn.get("arguments"), str))


def bad_answer(field: str) -> ApiError:
    return ApiError(502, f"The backend's answer is not a chat completion: bad {field}", code="upstream_invalid_answer")


def refuse(field: str, why: str, code: str = "unsupported_parameter") -> ApiError:
    return ApiError(400, f"{field}: {why}", param=field, code=code)


def check_fields(body: dict[str, Any], known: frozenset[str], protocol: str) -> None:
    """Every top-level field is either handled, or accepted and ignored (documented in
    docs/gateway.md; `known` holds both), or refused with a 400 that names it: nothing is
    silently dropped."""
    if not known.issuperset(body):
        unknown = sorted(k for k in body if k not in known)
        raise ApiError(400, f"{', '.join(unknown)}: not supported by the gateway's {protocol} translation",
                       param=unknown[0], code="unsupported_parameter")


def text_of(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise refuse(field, "must be a string", "invalid_value")
    return value


def usage_bytes(prompt: int, completion: int) -> dict[bytes, bytes]:
    """Token counts in the form the relay's per-key token metrics take (proxy._usage)."""
    return {b"prompt_tokens": str(prompt).encode(), b"completion_tokens": str(completion).encode(),
            b"total_tokens": str(prompt + completion).encode()}
