"""Usage on streams from plain upstreams: the gateway asks for `stream_options.include_usage`
(the usage feeds metrics and quotas), and takes the usage-only chunk it asked for back out of
the client's stream when the client did not ask for it (OpenAI's shape: a last chunk with
`"choices": []` and a `usage` object, before `data: [DONE]`)."""

from __future__ import annotations

import json
import re
from typing import Any

STREAMED_USAGE_OPS = frozenset({"chat.completions", "completions"})
OLLAMA_MARK = b'"eval_count"'
_OLLAMA_COUNTS = re.compile(rb'"(prompt_eval_count|eval_count)"\s*:\s*(\d+)')


def ollama_usage(data: bytes) -> dict[bytes, bytes] | None:
    """Ollama's native answers (/api/chat, /api/generate; a stream's last line) count tokens as
    `prompt_eval_count` and `eval_count`: the same counts in the relay's usage form."""
    found = dict(_OLLAMA_COUNTS.findall(data))
    if not found:
        return None
    prompt, completion = int(found.get(b"prompt_eval_count", 0)), int(found.get(b"eval_count", 0))
    return {b"prompt_tokens": str(prompt).encode(), b"completion_tokens": str(completion).encode(),
            b"total_tokens": str(prompt + completion).encode()}


def ask_for_usage(op: str, body: bytes, stream: bool) -> tuple[bytes, bool]:
    """(the body to send, whether the usage chunk must be dropped from the client's stream).
    `stream`: the body's `stream` is true (the proxy has parsed and validated the body)."""
    if not stream or op not in STREAMED_USAGE_OPS:
        return body, False
    if b'"stream_options"' not in body:
        # Spliced in rather than re-serialised: no second parse, and the rest of the body goes
        # on as the client wrote it.
        at = body.index(b"{") + 1
        return body[:at] + b'"stream_options":{"include_usage":true},' + body[at:], True
    try:
        data: Any = json.loads(body)
    except ValueError:
        return body, False
    options = data.get("stream_options") if isinstance(data, dict) else None
    if not isinstance(options, dict):
        return body, False  # the upstream answers the client's mistake in its own words
    if options.get("include_usage") is True:
        return body, False  # the client asked: it gets it
    data["stream_options"] = {**options, "include_usage": True}
    return json.dumps(data).encode(), True


class UsageChunkFilter:
    """Feeds SSE bytes through, holding back only an incomplete event, and drops the usage-only
    chunk. Events are split at blank lines (`\\n\\n`, or `\\r\\n\\r\\n`)."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.pending and chunk.endswith(b"\n\n") and b'"usage"' not in chunk:
            return chunk  # whole events, no usage: the common case, no copy
        data = self.pending + chunk if self.pending else chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        complete, self.pending = data[:cut], data[cut:]
        if b'"usage"' not in complete:
            return complete
        kept = []
        for event in _events(complete):
            if not _usage_only(event):
                kept.append(event)
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return b"" if _usage_only(rest) else rest


def _events(data: bytes) -> list[bytes]:
    out, start = [], 0
    while start < len(data):
        a, b = data.find(b"\n\n", start), data.find(b"\r\n\r\n", start)
        ends = [e + n for e, n in ((a, 2), (b, 4)) if e >= 0]
        end = min(ends) if ends else len(data)
        out.append(data[start:end])
        start = end
    return out


def _usage_only(event: bytes) -> bool:
    if b'"usage"' not in event:
        return False
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                doc = json.loads(line[5:])
            except ValueError:
                return False
            return isinstance(doc, dict) and doc.get("choices") == [] and isinstance(doc.get("usage"), dict)
    return False
