"""The service contract (docs/service-contract.md), for every registered service,
each started as a real subprocess (`nexusd run <service>`) on free ports.

Per-service setup lives in CONTRACT: environment that makes a heavy service cheap (stub or
eSpeak backends, the tiny GGUF), and how to reach its API (the gateway's API port wants a key
and serves its observability routes on a second port). A service missing from CONTRACT is
started with no extra setup, so a newly registered service is covered at once.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexusd.services import service_names
from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import run_service

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "metadata.schema.json").read_text())


@dataclass
class Contract:
    env: dict[str, str] = field(default_factory=dict)
    # Setup needing a temporary directory: returns (extra env, headers for the API routes).
    setup: Callable[[Path], tuple[dict[str, str], dict[str, str]]] | None = None
    obs_port_var: str | None = None  # observability routes on their own listener
    api_routes_are_json: bool = True  # False: skip the 400/413/415 body checks on the API port
    skip: Callable[[], str | None] | None = None
    # Known gaps, test name -> reason: strict xfail, so a fixed gap shows up as XPASS (a failure).
    xfail: dict[str, str] = field(default_factory=dict)


def _gateway_setup(tmp: Path) -> tuple[dict[str, str], dict[str, str]]:
    from nexusd.services.gateway.keys import new_key, write_keys

    plaintext, record = new_key("contract")
    write_keys(tmp / "api-keys", [record])
    return {"NEXUS_GATEWAY_KEYS_FILE": str(tmp / "api-keys")}, {"Authorization": f"Bearer {plaintext}"}


def _llamacpp_missing() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "the ollama service needs llama-cpp-python (the `llm` extra) for its embedded engine here"
    return None


CONTRACT: dict[str, Contract] = {
    "images": Contract(env={"NEXUS_IMAGES_BACKEND": "stub"}),
    "tts": Contract(env={"NEXUS_TTS_BACKEND": "espeak"}),
    # No Ollama daemon can run here: the embedded llama.cpp engine with the default tiny GGUF.
    "ollama": Contract(env={"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_THREADS": "1"},
                       skip=_llamacpp_missing),
    "gateway": Contract(
        setup=_gateway_setup, obs_port_var="NEXUS_GATEWAY_OBS_PORT"),
    # multipart uploads, not JSON: its body checks are in tests/services/stt/test_errors.py.
    "stt": Contract(env={"NEXUS_STT_BACKEND": "pocketsphinx"}, api_routes_are_json=False,
                    skip=lambda: None if importlib.util.find_spec("pocketsphinx") else "needs the `stt` extra"),
}


@dataclass
class Running:
    api: str
    obs: str
    headers: dict[str, str]

    def request(self, base: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request(method, path, body=body, headers={**self.headers, **(headers or {})})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()


@pytest.fixture(autouse=True)
def _known_gaps(request):
    if "service" not in request.fixturenames:
        return
    name = request.node.callspec.params["service"]
    reason = CONTRACT.get(name, Contract()).xfail.get(request.node.originalname)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(scope="module", params=service_names())
def service(request, tmp_path_factory):
    name = request.param
    contract = CONTRACT.get(name, Contract())
    if contract.skip and (why := contract.skip()):
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp(f"contract-{name}")
    env, headers = dict(contract.env), {}
    if contract.setup:
        extra_env, headers = contract.setup(tmp)
        env.update(extra_env)
    port = free_port()
    obs_port = port
    if contract.obs_port_var:
        obs_port = free_port()
        env[contract.obs_port_var] = str(obs_port)
    with run_service(name, tmp, port=port, env=env, wait_ready=False) as svc:
        running = Running(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{obs_port}", headers)

        def ready() -> bool:
            if svc.proc.poll() is not None:
                raise AssertionError(f"{name} exited with {svc.proc.returncode}:\n{svc.logs()[-3000:]}")
            return running.request(running.obs, "GET", "/readyz")[0] == 200

        try:
            wait_for(ready, timeout=180, interval=0.2, what=f"{name} ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{svc.logs()[-3000:]}") from None
        yield name, contract, running
    shutil.rmtree(tmp, ignore_errors=True)


def get_json(running: Running, base: str, path: str) -> tuple[int, dict]:
    status, _, body = running.request(base, "GET", path)
    return status, json.loads(body)


def assert_envelope(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict:
    assert status == expected, body[:500]
    assert headers.get("Content-Type", "").startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]
    return doc["error"]


def test_health(service):
    _, _, running = service
    status, body = get_json(running, running.obs, "/health")
    assert status == 200 and body["status"] == "ok"


def test_readyz(service):
    _, _, running = service
    status, body = get_json(running, running.obs, "/readyz")
    assert status == 200 and body["status"] == "ready"
    assert all(c["ok"] for c in body["checks"].values())


def test_metadata_validates(service):
    name, _, running = service
    status, doc = get_json(running, running.obs, "/v1/metadata")
    assert status == 200
    jsonschema.validate(doc, SCHEMA)
    assert doc["service"]["name"] == name
    for ep in doc["endpoints"]:
        assert ep["operation_id"]


def test_metrics_parse(service):
    _, _, running = service
    status, headers, body = running.request(running.obs, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"nexus_http_requests", "nexus_http_inflight_requests", "nexus_ready"} <= names


def test_request_id_round_trip(service):
    _, _, running = service
    _, headers, _ = running.request(running.obs, "GET", "/health", headers={"X-Request-ID": "contract-1"})
    assert headers["X-Request-ID"] == "contract-1"


def test_unknown_route_is_404_envelope(service):
    _, _, running = service
    for base in {running.api, running.obs}:
        err = assert_envelope(*running.request(base, "GET", "/v1/no-such-route-for-contract"), 404)
        assert err["type"] == "not_found_error"


def test_wrong_method_is_405_envelope(service):
    _, _, running = service
    status, headers, body = running.request(running.obs, "DELETE", "/v1/metadata")
    assert_envelope(status, headers, body, 405)
    assert "GET" in headers["Allow"]


def json_endpoint(running: Running) -> dict | None:
    """The first listed POST endpoint with a body limit: it takes a JSON body."""
    doc = get_json(running, running.obs, "/v1/metadata")[1]
    return next((e for e in doc["endpoints"] if e["method"] == "POST" and e.get("max_body")), None)


@pytest.fixture
def post_endpoint(service):
    name, contract, running = service
    ep = json_endpoint(running) if contract.api_routes_are_json else None
    if ep is None:
        pytest.skip(f"{name} lists no POST endpoint with a JSON body")
    return running, ep


def test_malformed_json_is_400_envelope(post_endpoint):
    running, ep = post_endpoint
    resp = running.request(running.api, "POST", ep["path"], b'{"model": ',
                           {"Content-Type": "application/json"})
    assert assert_envelope(*resp, 400)["type"] == "invalid_request_error"


def test_wrong_content_type_is_415_envelope(post_endpoint):
    running, ep = post_endpoint
    resp = running.request(running.api, "POST", ep["path"], b"model=x", {"Content-Type": "text/plain"})
    assert_envelope(*resp, 415)


def test_body_over_the_limit_is_413_envelope(post_endpoint):
    running, ep = post_endpoint
    body = b'{"pad": "' + b"x" * ep["max_body"] + b'"}'
    resp = running.request(running.api, "POST", ep["path"], body, {"Content-Type": "application/json"})
    assert_envelope(*resp, 413)


def test_still_serving_after_bad_requests(service):
    _, _, running = service
    assert get_json(running, running.obs, "/health")[0] == 200
