"""The re-encoding hot path of the gateway's protocol translation (DESIGN §9): a 50-chunk chat
SSE stream decoded, translated to Responses and to Anthropic events, and encoded, with each JSON
codec in the same run: the stdlib `json`, `orjson`, `msgspec`. Prints CPU µs per streamed
chunk and the ratio to the stdlib.

    python -m bench protocol_codec [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nexusd.services.gateway import chatstream, messages, responses  # noqa: E402

CHUNK = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-model",
         "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
STREAM = b"".join(b"data: " + json.dumps(CHUNK).encode() + b"\n\n" for _ in range(50)) + b"data: [DONE]\n\n"


def codecs() -> dict[str, tuple]:
    found = {}
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    found["json"] = (json.loads, lambda o: encode(o).encode())
    try:
        import orjson
        found["orjson"] = (orjson.loads, orjson.dumps)
    except ImportError:
        pass
    try:
        import msgspec
        found["msgspec"] = (msgspec.json.decode, msgspec.json.encode)
    except ImportError:
        pass
    return found


def one_stream(protocol: str) -> int:
    """Translate STREAM once, as protocols.py does (one write per upstream read); returns bytes out."""
    if protocol == "responses":
        translator = responses.ResponsesStream(responses.skeleton({"input": "Hello"}, "resp_b", "bench-model"))
    else:
        translator = messages.MessagesStream("bench-model", [])
    reader = chatstream.ChatStreamReader()
    out = b"".join(_sse(e) for e in translator.start())
    for i in range(0, len(STREAM), 4096):
        events = [e for c in reader.feed(STREAM[i:i + 4096]) for e in translator.feed(c)]
        out += b"".join(_sse(e) for e in events)
    out += b"".join(_sse(e) for e in translator.finish())
    return len(out)


def _sse(event: dict) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + chatstream.dumps(event) + b"\n\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    results: dict[tuple[str, str], float] = {}
    for protocol in ("responses", "messages"):
        for name, (loads, dumps) in codecs().items():
            saved = chatstream.loads, chatstream.dumps, messages.loads
            chatstream.loads, chatstream.dumps, messages.loads = loads, dumps, loads  # swapped for the run
            one_stream(protocol)  # warm-up
            t0 = time.process_time()
            for _ in range(args.rounds):
                one_stream(protocol)
            per_chunk = (time.process_time() - t0) / args.rounds / 50 * 1e6
            chatstream.loads, chatstream.dumps, messages.loads = saved
            results[(protocol, name)] = per_chunk
    print("| protocol | codec | CPU µs per streamed chunk | vs json |")
    print("|---|---|---|---|")
    for (protocol, name), us in results.items():
        print(f"| {protocol} | {name} | {us:.2f} | {us / results[(protocol, 'json')]:.2f}x |")


if __name__ == "__main__":
    main()
