"""Fuzz session: generated requests from the gateway's OpenAPI document (the services' own
request models) against a real gateway with real services (see conftest.py).

Properties, over at least 2,000 requests: no answer >= 500 made by the gateway itself (one
without X-Nexus-Instance), no 500 from a service, every error body an OpenAI envelope; at the end
the gateway is ready and its RSS within 10% of what it was after a warm-up pass (the first
requests fill caches and pools for good). The counts are printed."""

from __future__ import annotations

import collections
import http.client
import json
import os

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from nexusd.services.gateway.openapi import document
from tests.fuzz.conftest import SUMMARY
from tests.fuzz.strategies import Request, SchemaStrategies

REQUESTS = int(os.environ.get("NEXUS_FUZZ_REQUESTS", "2000"))
WARMUP = 200


class Client:
    def __init__(self, url: str, key: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.key = key
        self.conn: http.client.HTTPConnection | None = None

    def send(self, req: Request) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                headers = {"Authorization": f"Bearer {self.key}", **dict(req.headers)}
                self.conn.request(req.method, req.path, body=req.body or None, headers=headers)
                resp = self.conn.getresponse()
                body = resp.read()
                result = resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
                if resp.will_close:
                    self.conn.close()
                    self.conn = None
                return result
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def is_envelope(body: bytes, path: str) -> bool:
    """The route's error shape: OpenAI's envelope, Ollama's {"error": "..."} on /api/*."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if path.startswith("/api/"):
        return isinstance(doc, dict) and list(doc) == ["error"] and isinstance(doc["error"], str)
    error = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error) \
        and isinstance(error["message"], str)


def test_fuzz_session(stack):
    strategies = SchemaStrategies(document(), stack.models)
    client = Client(stack.gateway.api, stack.key)
    counts: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    problems: list[str] = []

    def check(req: Request) -> None:
        status, headers, body = client.send(req)
        counts["requests"] += 1
        statuses[status] += 1
        made_by_gateway = "x-nexus-instance" not in headers
        if status >= 500 and made_by_gateway:
            counts["gateway_5xx"] += 1
            problems.append(f"gateway {status}: {req.describe()} -> {body[:300]!r}")
        if status == 500 and not made_by_gateway:
            counts["service_500"] += 1
            problems.append(f"service 500 ({headers['x-nexus-instance']}): {req.describe()} -> {body[:300]!r}")
        if status >= 400 and req.method != "HEAD" and not is_envelope(body, req.path):
            counts["non_envelope"] += 1
            problems.append(f"non-envelope {status}: {req.describe()} -> {body[:300]!r}")

    def session(examples: int) -> None:
        @seed(20261201)
        @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategies.requests())
        def run(req: Request) -> None:
            check(req)

        run()

    session(WARMUP)
    rss_start = stack.rss_kib()
    session(REQUESTS)
    rss_end = stack.rss_kib()
    summary = (f"fuzz: {counts['requests']} requests ({WARMUP} warm-up); statuses {dict(sorted(statuses.items()))}; "
          f"gateway >=500: {counts['gateway_5xx']}; service 500: {counts['service_500']}; "
          f"non-envelope errors: {counts['non_envelope']}; gateway RSS {rss_start} -> {rss_end} KiB")
    print("\n" + summary)
    SUMMARY.append(summary)
    assert counts["requests"] >= REQUESTS + WARMUP
    assert not problems, "\n".join(problems[:20])
    assert stack.ready()
    assert rss_end <= rss_start * 1.10, f"gateway RSS grew from {rss_start} to {rss_end} KiB"
    if "ollama" not in stack.services:
        pytest.skip("llama-cpp-python not installed: the session ran without the LLM behind the gateway")
