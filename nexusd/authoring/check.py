"""`nexusd check SERVICE`: the service contract (docs/service-contract.md) as a command, and as a
function for pytest (`run_contract`). It starts the service as systemd would (or talks to a running
one with `url=`), runs every check and reports each as a row; nothing is fixed for one service.

    from nexusd.authoring.check import run_contract
    report = run_contract("demo-svc")
    assert report.ok, report.table()
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from nexusd.authoring.http import Answer, RawExchange, request
from nexusd.authoring.launch import Launched, launch
from nexusd.runtime.service import Service

SCHEMA_PATH = Path(__file__).with_name("metadata.schema.json")
PASS, FAIL, SKIP = "pass", "FAIL", "skip"
PROBE_PATH = "/v1/no-such-route-nexusd-check"
REQUIRED_METRICS = ("nexus_http_requests", "nexus_http_inflight_requests", "nexus_ready", "nexus_service_info")


class Failed(Exception):
    """A check found a contract violation; the message says which."""


class Skipped(Exception):
    """A check cannot run here; the message says why."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""


@dataclass
class Report:
    service: str
    target: str
    results: list[Result] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.results)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == FAIL]

    def result(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def table(self) -> str:
        width = max((len(r.name) for r in self.results), default=10)
        lines = [f"nexusd check {self.service}: {self.target}"]
        lines += [f"  {r.status.upper():<4}  {r.name:<{width}}  {r.detail}" for r in self.results]
        counts = {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, SKIP)}
        lines.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
        return "\n".join(lines)


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
def error_shape(path: str) -> str:
    """The project's per-route error formats: Ollama's on /api/*, Anthropic's on /v1/messages."""
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
        expect(doc.get("type") == "error" and isinstance(err, dict) and {"type", "message"} <= set(err),
               f"not Anthropic's error envelope: {answer.snippet()}")
        return err  # type: ignore[return-value]
    expect(isinstance(doc, dict) and set(doc) == {"error"} and isinstance(err, dict)
           and set(err) == {"message", "type", "param", "code"},
           f"not OpenAI's envelope {{\"error\":{{message,type,param,code}}}}: {answer.snippet()}")
    expect(isinstance(err["message"], str) and err["message"], "the envelope's message is empty")
    return err  # type: ignore[return-value]


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
    how = validate_metadata(doc)
    t.metadata = doc
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
    shape = error_shape(path)
    other = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in declared)
    yield f"{label}: wrong method", partial(_wrong_method, t, other, path, shape, ep)
    if method not in ("POST", "PUT", "PATCH"):
        return
    yield f"{label}: bad JSON", partial(_bad_body, t, method, path, b'{"model": ', "application/json", 400, shape)
    yield f"{label}: wrong type", partial(_bad_body, t, method, path, b'["not", "an", "object"]',
                                          "application/json", 400, shape)
    yield f"{label}: not JSON", partial(_bad_body, t, method, path, b"model=x", "text/plain", 415, shape)
    yield f"{label}: too large", partial(_too_large, t, method, path, shape, ep["max_body"])


def _bad_body(t: Target, method: str, path: str, body: bytes, ctype: str, status: int, shape: str) -> str:
    return _status(t.send(method, path, body, {"Content-Type": ctype}), status, shape)


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


def check_unit(t: Target) -> str:
    from nexusd.units.cli import write_tree
    from nexusd.units.render import render_all

    if t.cls is None:
        raise Skipped(f"{t.name} is not installed here: no unit to render")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise Skipped("systemd-analyze is not installed: unit rendered, not verified")
    nexusd = Path(sys.executable).with_name("nexusd")
    binary = str(nexusd) if nexusd.exists() else shutil.which("nexusd") or sys.executable
    files = render_all(nexusd=binary, services=[t.name])
    with tempfile.TemporaryDirectory(prefix="nexusd-check-units-") as tmp:
        out = Path(tmp)
        write_tree(out, files)
        for rel in files:  # a drop-in for a unit we do not ship is verified on a stub unit
            head = rel.split("/")[0]
            if "/" in rel and head.endswith(".d") and not (out / head.removesuffix(".d")).exists():
                (out / head.removesuffix(".d")).write_text("[Service]\nExecStart=/bin/true\n")
        units = sorted(str(p) for p in out.iterdir() if p.suffix in (".service", ".socket", ".target"))
        proc = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, cwd=out, timeout=120)
    # verify exits 0 on unknown keys and bad values: any output at all is a failure.
    output = (proc.stdout + proc.stderr).strip()
    expect(proc.returncode == 0 and not output, f"systemd-analyze verify: {output[:500]}")
    return f"systemd-analyze verify: {', '.join(Path(u).name for u in units)}"


def check_drain(t: Target) -> str:
    """SIGTERM with a request in flight: STOPPING=1, the request still gets its whole answer,
    exit 0. The request is held in flight by sending its body in two parts around the signal."""
    launched = t.launched
    if launched is None:
        raise Skipped("not started by nexusd check (--url): not stopping it")
    endpoint = next((e for e in (t.metadata or {}).get("endpoints", [])
                     if e["method"] == "POST" and e.get("max_body")), None)
    held = None
    if endpoint is not None:
        body = b'{"nexusd_check": "drain"}'
        held = RawExchange(t.api, "POST", concrete(endpoint["path"]),
                           {**t.headers, "Content-Type": "application/json"}, len(body))
        held.send([body[:10]])
    launched.proc.send_signal(15)
    expect(launched.notify.wait_for("STOPPING=1", launched.drain_timeout + 10, launched.alive),
           "no STOPPING=1 on NOTIFY_SOCKET after SIGTERM")
    detail = "STOPPING=1"
    if held is not None and endpoint is not None:
        early = held.answered()
        held.send([body[10:]])
        try:
            answer = held.response()
        except ValueError as exc:
            raise Failed(f"the request in flight at SIGTERM lost its answer: {exc}") from None
        detail += f"; in-flight POST {endpoint['path']} answered {answer.status}" + (
            " (before the drain: nothing held)" if early else " after the drain began")
    code = launched.terminate()
    expect(code == 0, f"exit status {code} after SIGTERM (expected 0):\n{launched.log_tail()}")
    return detail + "; exit 0"


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


def _run(name: str, fn: Callable[[], str]) -> Result:
    try:
        return Result(name, PASS, fn())
    except Skipped as exc:
        return Result(name, SKIP, str(exc))
    except Failed as exc:
        return Result(name, FAIL, str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash in one check is that check's failure
        return Result(name, FAIL, f"{type(exc).__name__}: {exc}")


def run_contract(service: str, *, url: str | None = None, obs_url: str | None = None,
                 env: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Report:
    """Every contract check against `service`: started here (env added to its environment), or the
    running one at `url` (`obs_url`: its observability listener when that is another port)."""
    from nexusd.services import load_service

    try:
        cls: type[Service] | None = load_service(service)
    except KeyError:
        cls = None
    if url is None and cls is None:
        return Report(service, "not found", [Result("load", FAIL, f"unknown service {service!r}: "
                                                    "not built in and no `nexusd.services` entry point")])
    launched = None
    if url is None:
        assert cls is not None
        launched = launch(cls, env)
        target = Target(service, launched.api, launched.obs, headers or {}, cls, launched)
        where = f"started `nexusd run {service}` (api {launched.api}, observability {launched.obs})"
    else:
        target = Target(service, url.rstrip("/"), (obs_url or url).rstrip("/"), headers or {}, cls)
        where = f"running at {target.api}"
    report = Report(service, where)
    try:
        if launched is not None and not _started(launched, report):
            return report
        for name, check in CHECKS:
            report.results.append(_run(name, lambda c=check: c(target)))
        for name, fn in endpoint_checks(target):
            report.results.append(_run(name, fn))
        report.results.append(_run("still serving", lambda: check_still_serving(target)))
        report.results.append(_run("unit", lambda: check_unit(target)))
        report.results.append(_run("SIGTERM drain", lambda: check_drain(target)))
    finally:
        if launched is not None:
            launched.close()
    return report


def _started(launched: Launched, report: Report) -> bool:
    """Wait for READY=1 (bounded by the unit's start timeout); a row saying why when it fails."""
    ready = launched.notify.wait_for("READY=1", launched.start_timeout + 30, launched.alive)
    if ready:
        return True
    why = f"exited with {launched.proc.returncode}" if not launched.alive() else "no READY=1 in time"
    report.results.append(Result("start", FAIL, f"{why}:\n{launched.log_tail()}"))
    return False


@contextmanager
def serve(service: str, env: dict[str, str] | None = None) -> Iterator[Launched]:
    """Start a service as `nexusd check` does; yield it (`.api`, `.obs`, `.notify`) once it sent
    READY=1; always stop it. For a service's own tests."""
    from nexusd.services import load_service

    launched = launch(load_service(service), env)
    try:
        if not launched.notify.wait_for("READY=1", launched.start_timeout + 30, launched.alive):
            raise RuntimeError(f"{service} sent no READY=1:\n{launched.log_tail()}")
        yield launched
    finally:
        launched.close()


def main(service: str, url: str | None, obs_url: str | None, env: dict[str, str],
         headers: dict[str, str]) -> int:
    report = run_contract(service, url=url, obs_url=obs_url, env=env, headers=headers)
    print(report.table())
    return 0 if report.ok else 1
