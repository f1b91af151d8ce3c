"""The contract checks over HTTP (docs/service-contract.md): each takes the `Target` and returns a
detail string, or raises `Failed`/`Skipped`. Nothing here is specific to one service: endpoints come
from the service's own /v1/metadata."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nexusd.authoring.http import Answer, RawExchange, request
from nexusd.authoring.launch import Launched
from nexusd.authoring.report import Failed, Skipped, expect
from nexusd.runtime.service import Service

SCHEMA_PATH = Path(__file__).with_name("metadata.schema.json")
PROBE_PATH = "/v1/no-such-route-nexusd-check"
REQUIRED_METRICS = ("nexus_http_requests", "nexus_http_inflight_requests", "nexus_ready", "nexus_service_info")


@dataclass
class Target:
    """What the checks talk to."""

    name: str
    api: str
    obs: str
    headers: dict[str, str]
    cls: type[Service] | None
    launched: Launched | None = None
    metadata: dict[str, Any] | None = None

    def get(self, base: str, path: str, headers: dict[str, str] | None = None) -> Answer:
        return request(base, "GET", path, headers={**self.headers, **(headers or {})})

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, base: str | None = None) -> Answer:
        return request(base or self.api, method, path, body, {**self.headers, **(headers or {})})


# --- error shapes -----------------------------------------------------------------------------
def error_shape(path: str, declared: str | None = None) -> str:
    """The route's error format: as its metadata says (`endpoints[].errors`), else, for a service
    from before that field, the convention: Ollama's on /api/*, Anthropic's on /v1/messages."""
    if declared:
        return declared
    if path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages":
        return "anthropic"
    return "openai"


def expect_error(answer: Answer, status: int, shape: str = "openai") -> dict[str, Any]:
    expect(answer.status == status, f"expected {status}, got {answer.snippet()}")
    ctype = answer.headers.get("Content-Type", "")
    expect(ctype.startswith("application/json"), f"not a JSON error ({shape} envelope): {answer.snippet()}")
    try:
        doc = answer.json()
    except ValueError:
        raise Failed(f"error body is not JSON: {answer.snippet()}") from None
    if shape == "ollama":
        expect(isinstance(doc, dict) and isinstance(doc.get("error"), str), f"not Ollama's {{\"error\": ...}}: {answer.snippet()}")
        return {"message": doc["error"]}
    err = doc.get("error") if isinstance(doc, dict) else None
    if shape == "anthropic":
        if not (isinstance(err, dict) and doc.get("type") == "error" and {"type", "message"} <= set(err)):
            raise Failed(f"not Anthropic's error envelope: {answer.snippet()}")
        return err
    if not (isinstance(err, dict) and set(doc) == {"error"} and set(err) == {"message", "type", "param", "code"}):
        raise Failed(f"not OpenAI's envelope {{\"error\":{{message,type,param,code}}}}: {answer.snippet()}")
    expect(isinstance(err["message"], str) and err["message"], "the envelope's message is empty")
    return err


# --- the checks -------------------------------------------------------------------------------
def check_health(t: Target) -> str:
    for base in dict.fromkeys((t.obs, t.api)):
        answer = t.get(base, "/health")
        expect(answer.status == 200, f"{base}/health: {answer.snippet()}")
        expect(answer.json().get("status") == "ok", f"{base}/health: {answer.snippet()}")
    return "200 {\"status\":\"ok\"}"


def check_notify_ready(t: Target) -> str:
    if t.launched is None:
        raise Skipped("not started by nexusd check (--url)")
    expect("READY=1" in t.launched.notify.messages, "no READY=1 on NOTIFY_SOCKET")
    return f"READY=1, STATUS={t.launched.notify.status()}"


def check_readyz(t: Target) -> str:
    answer = t.get(t.obs, "/readyz")
    body = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
    expect(answer.status == 200 and body.get("status") == "ready", f"not ready: {answer.snippet()}")
    checks = body.get("checks") or {}
    expect(checks, "no readiness check bound: /readyz and READY=1 cannot tell a loaded service from "
                   "a loading one (return named checks from checks())")
    failing = [n for n, c in checks.items() if not c.get("ok")]
    expect(not failing, f"checks failing: {failing}")
    return f"checks: {', '.join(checks)}"


def expected_version(cls: type[Service]) -> tuple[str, str]:
    """(version, where it comes from): the class's own, else its distribution's."""
    from nexusd.services import declares_version, distribution

    if declares_version(cls):
        return cls.version, f"{cls.__name__}.version"
    dist = distribution(cls.name)
    if dist is None:
        return cls.version, "no distribution found"
    return dist.version, f"distribution {dist.metadata['Name']}"


def check_metadata(t: Target) -> str:
    answer = t.get(t.obs, "/v1/metadata")
    expect(answer.status == 200, f"{answer.snippet()}")
    doc = answer.json()
    t.metadata = doc  # even if invalid: the endpoint checks still get what it lists
    how = validate_metadata(doc)
    service = doc["service"]
    expect(service["name"] == t.name, f"service.name is {service['name']!r}, not {t.name!r}")
    unnamed = [f"{e['method']} {e['path']}" for e in doc["endpoints"] if not e["operation_id"]]
    expect(not unnamed, f"endpoints without an operation_id: {unnamed}")
    if t.cls is not None:
        version, source = expected_version(t.cls)
        expect(service["version"] == version,
               f"service.version is {service['version']!r}, expected {version!r} ({source})")
    return f"valid ({how}); {service['name']} {service['version']}, {len(doc['endpoints'])} endpoints"


def validate_metadata(doc: Any) -> str:
    try:
        import jsonschema
    except ImportError:  # jsonschema is in the `check` extra; the schema comes from these models
        from pydantic import ValidationError

        from nexusd.runtime.metadata import MetadataDocument

        try:
            MetadataDocument.model_validate(doc)
        except ValidationError as exc:
            raise Failed(f"against nexusd's metadata models: {str(exc)[:300]}") from None
        return "nexusd's metadata models; install nexusd[check] to use the JSON schema"
    try:
        jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "document"
        raise Failed(f"against metadata.schema.json at {where}: {exc.message[:300]}") from None
    return "metadata.schema.json"


def check_metrics(t: Target) -> str:
    from prometheus_client.parser import text_string_to_metric_families

    answer = t.get(t.obs, "/metrics")
    expect(answer.status == 200 and answer.headers.get("Content-Type", "").startswith("text/plain"),
           answer.snippet())
    try:
        families = {f.name: f for f in text_string_to_metric_families(answer.body.decode())}
    except ValueError as exc:
        raise Failed(f"does not parse as Prometheus text: {exc}") from None
    missing = [m for m in REQUIRED_METRICS if m not in families]
    expect(not missing, f"missing: {', '.join(missing)}")
    samples = families["nexus_service_info"].samples
    expect(samples, "nexus_service_info has no sample (the gauge is never set)")
    labels = samples[0].labels
    expect({"service", "version", "instance_id"} <= set(labels) and samples[0].value == 1,
           f"nexus_service_info{labels} = {samples[0].value}; expected labels service, version, instance_id = 1")
    if t.metadata:
        want = {k: t.metadata["service"][k] for k in ("name", "version", "instance_id")}
        got = {"name": labels["service"], "version": labels["version"], "instance_id": labels["instance_id"]}
        expect(got == want, f"nexus_service_info labels {got} differ from /v1/metadata {want}")
    return f"{len(families)} families; nexus_service_info{{{', '.join(f'{k}={v}' for k, v in labels.items())}}}"


def check_request_id(t: Target) -> str:
    rid = f"nexusd-check-{secrets.token_hex(4)}"
    for base, path in ((t.obs, "/health"), (t.api, PROBE_PATH)):
        answer = t.get(base, path, {"X-Request-ID": rid})
        expect(answer.headers.get("X-Request-ID") == rid,
               f"GET {path}: X-Request-ID {answer.headers.get('X-Request-ID')!r}, sent {rid!r}")
    created = t.get(t.obs, "/health").headers.get("X-Request-ID")
    expect(created, "no X-Request-ID created for a request without one")
    return "returned as sent (success and error), created when absent"


def check_not_found(t: Target) -> str:
    for base in dict.fromkeys((t.api, t.obs)):
        err = expect_error(t.get(base, PROBE_PATH), 404)
        expect(err["type"] == "not_found_error", f"type {err['type']!r}, expected not_found_error")
    return "404 envelope, type not_found_error"


def check_metadata_method(t: Target) -> str:
    answer = t.send("DELETE", "/v1/metadata", base=t.obs)
    expect_error(answer, 405)
    expect("GET" in answer.headers.get("Allow", ""), f"Allow: {answer.headers.get('Allow')!r}")
    return "405 envelope, Allow: " + answer.headers.get("Allow", "")


def concrete(path: str) -> str:
    """A request path for a route pattern (`/v1/models/{model:.+}` → `/v1/models/nexusd-check`)."""
    return re.sub(r"\{[^{}]*\}", "nexusd-check", path)


def endpoint_checks(t: Target) -> Iterator[tuple[str, Callable[[], str]]]:
    endpoints = (t.metadata or {}).get("endpoints")
    if endpoints is None:
        yield "endpoints", _fail("no /v1/metadata: endpoints unknown")
        return
    methods: dict[str, set[str]] = {}
    for ep in endpoints:
        methods.setdefault(concrete(ep["path"]), set()).add(ep["method"])
    for ep in endpoints:
        yield from _checks_for(t, ep, methods[concrete(ep["path"])])


def _checks_for(t: Target, ep: dict[str, Any], declared: set[str]) -> Iterator[tuple[str, Callable[[], str]]]:
    method, path, label = ep["method"], concrete(ep["path"]), f"{ep['method']} {ep['path']}"
    if ep.get("max_body") is None:
        yield label, _skip("pass-through: keeps its upstream's error shape and limits")
        return
    shape = error_shape(path, ep.get("errors"))
    other = next((m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in declared), None)
    if other is not None and "*" not in declared:
        yield f"{label}: wrong method", partial(_wrong_method, t, other, path, shape, ep)
    if method not in ("POST", "PUT", "PATCH"):
        return
    yield f"{label}: bad JSON", partial(_bad_body, t, method, path, b'{"model": ', "application/json", 400, shape)
    yield f"{label}: wrong type", partial(_bad_body, t, method, path, b'["not", "an", "object"]',
                                          "application/json", 400, shape)
    yield f"{label}: not JSON", partial(_not_json, t, method, path, shape)
    yield f"{label}: too large", partial(_too_large, t, method, path, shape, ep["max_body"])


def _not_json(t: Target, method: str, path: str, shape: str) -> str:
    answer = t.send(method, path, b"model=x", {"Content-Type": "text/plain"})
    if shape == "ollama" and answer.status == 400:
        # Ollama's own server ignores Content-Type (`curl -d` sends form-encoded JSON), so an
        # Ollama-compatible route may answer "not JSON" (400) rather than refuse the type (415).
        return _status(answer, 400, shape)
    return _status(answer, 415, shape)


def _bad_body(t: Target, method: str, path: str, body: bytes, ctype: str, status: int, shape: str) -> str:
    answer = t.send(method, path, body, {"Content-Type": ctype})
    if ctype == "application/json" and answer.status == 415 and status != 415:
        _status(answer, 415, shape)  # a proper refusal of the type, else this row fails here
        raise Skipped("takes no JSON (415 for application/json): its own body type's checks are the service's")
    return _status(answer, status, shape)


def _fail(why: str) -> Callable[[], str]:
    def fail() -> str:
        raise Failed(why)
    return fail


def _skip(why: str) -> Callable[[], str]:
    def skip() -> str:
        raise Skipped(why)
    return skip


def _status(answer: Answer, status: int, shape: str) -> str:
    err = expect_error(answer, status, shape)
    if shape == "openai":  # a client error in OpenAI's terms (openai-python's BadRequestError & co.)
        expect(err["type"] == "invalid_request_error", f"type {err['type']!r}, expected invalid_request_error")
    return f"{status} {shape} envelope: {str(err.get('message'))[:60]}"


def _wrong_method(t: Target, method: str, path: str, shape: str, ep: dict[str, Any]) -> str:
    answer = t.send(method, path, b"{}" if method != "DELETE" else None, {"Content-Type": "application/json"})
    expect_error(answer, 405, shape)
    allow = answer.headers.get("Allow", "")
    expect(ep["method"] in allow, f"405 without Allow naming {ep['method']} (Allow: {allow!r})")
    return f"{method}: 405 {shape} envelope, Allow: {allow}"


def _too_large(t: Target, method: str, path: str, shape: str, limit: int) -> str:
    length = limit + 1
    exchange = RawExchange(t.api, method, path, {**t.headers, "Content-Type": "application/json"}, length)
    piece = b"x" * 65536
    exchange.send(piece[: min(len(piece), length - i)] for i in range(0, length, len(piece)))
    return _status(exchange.response(), 413, shape)


def check_still_serving(t: Target) -> str:
    expect(t.get(t.obs, "/health").status == 200, "/health fails after the bad requests")
    if t.launched is not None:
        expect(t.launched.alive(), f"the process exited:\n{t.launched.log_tail()}")
    return "/health 200 after every bad request"


CHECKS: list[tuple[str, Callable[[Target], str]]] = [
    ("health", check_health),
    ("READY=1", check_notify_ready),
    ("readyz", check_readyz),
    ("metadata", check_metadata),
    ("metrics", check_metrics),
    ("X-Request-ID", check_request_id),
    ("404", check_not_found),
    ("405", check_metadata_method),
]
