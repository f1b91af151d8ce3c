"""Small HTTP and /metrics helpers shared by the ollama service tests."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def post_json(url: str, doc: dict, headers: dict | None = None):
    return http("POST", url, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})})


def metric(svc, name: str, **labels) -> float:
    _, text = svc.get("/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}" if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def eog_bias() -> dict[str, int]:
    """logit_bias banning every end-of-generation token of SmolLM2: a stream that runs until
    max_tokens (or until its client leaves)."""
    import llama_cpp

    from nexusd.services.ollama.backends.llamacpp import default_gguf

    llm = llama_cpp.Llama(default_gguf(), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    return {str(t): -100 for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def open_stream(svc, doc: dict, events: int = 2) -> socket.socket:
    """POST a streamed /v1/chat/completions on a raw socket and return it once `events` SSE
    events arrived (the role chunk, then the first token: the sequence runs); closing the
    socket is a client leaving mid-stream."""
    body = json.dumps({"stream": True, **doc})
    conn = socket.create_connection(("127.0.0.1", svc.port), timeout=120)
    conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    got = b""
    while got.count(b"data: ") < events:
        chunk = conn.recv(65536)
        assert chunk, "stream closed early"
        got += chunk
        assert got[:12] in (b"HTTP/1.1 200", b"HTTP/1.1 200"[:len(got)]), got[:500]
    return conn
