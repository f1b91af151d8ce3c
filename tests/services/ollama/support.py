"""Small HTTP and /metrics helpers shared by the ollama service tests."""

from __future__ import annotations

import json
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
