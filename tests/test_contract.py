"""The service contract (docs/service-contract.md) for every registered service, each
started as a real subprocess (`nexusd run <service>`, on free ports, with a NOTIFY_SOCKET) by the
same checker service authors run: `nexusd check` (nexusd/authoring/check.py). One checker run per
service; each test below asserts one part of its report.

Per-service setup lives in CONTRACT: environment that makes a heavy service cheap (stub or eSpeak
backends, the tiny GGUF), and headers for its API (the gateway's API port wants a key). A service
missing from CONTRACT is checked with no extra setup, so a newly registered service is covered at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nexusd.authoring.check import FAIL, PASS, SKIP, Report, run_contract
from nexusd.services import service_names


@dataclass
class Contract:
    env: dict[str, str] = field(default_factory=dict)
    # Setup needing a temporary directory: returns (extra env, headers for the API routes).
    setup: Callable[[Path], tuple[dict[str, str], dict[str, str]]] | None = None
    skip: Callable[[], str | None] | None = None
    # Known gaps, start of a checker row's name -> reason. Strict: such a row must fail, so a
    # fixed gap shows up.
    known_gaps: dict[str, str] = field(default_factory=dict)


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
    # Multipart uploads, not JSON: the checker skips the JSON-body rows of a route that refuses
    # JSON with a 415 envelope; stt's own body checks are in tests/services/stt/test_errors.py.
    "stt": Contract(env={"NEXUS_STT_BACKEND": "pocketsphinx"},
                    skip=lambda: None if importlib.util.find_spec("pocketsphinx") else "needs the `stt` extra"),
    "gateway": Contract(setup=_gateway_setup),
}


@pytest.fixture(scope="module", params=service_names())
def report(request, tmp_path_factory) -> tuple[Report, Contract]:
    name = request.param
    contract = CONTRACT.get(name, Contract())
    if contract.skip and (why := contract.skip()):
        pytest.skip(why)
    env, headers = dict(contract.env), {}
    if contract.setup:
        extra_env, headers = contract.setup(tmp_path_factory.mktemp(f"contract-{name}"))
        env.update(extra_env)
    return run_contract(name, env=env, headers=headers), contract


def assert_rows(report: tuple[Report, Contract], select: Callable[[str], bool], allowed=(PASS,)) -> None:
    rep, contract = report
    rows = [r for r in rep.results if select(r.name)]
    assert rows, f"no such rows in:\n{rep.table()}"
    for r in rows:
        if any(r.name.startswith(gap) for gap in contract.known_gaps):
            assert r.status == FAIL, f"known gap fixed, remove it from CONTRACT: {r.name}"
        else:
            assert r.status in allowed, f"{r.name}: {r.detail}\n{rep.table()}"


def test_started_and_notified_ready(report):
    assert_rows(report, lambda n: n == "READY=1")


def test_health(report):
    assert_rows(report, lambda n: n == "health")


def test_readyz_runs_named_checks(report):
    assert_rows(report, lambda n: n == "readyz")


def test_metadata_validates(report):
    assert_rows(report, lambda n: n == "metadata")


def test_metrics_parse_with_service_info(report):
    assert_rows(report, lambda n: n == "metrics")


def test_request_id_round_trip(report):
    assert_rows(report, lambda n: n == "X-Request-ID")


def test_unknown_route_is_404_envelope(report):
    assert_rows(report, lambda n: n == "404")


def test_wrong_method_is_405_envelope(report):
    assert_rows(report, lambda n: n == "405")


def test_every_endpoint_answers_bad_requests_with_envelopes(report):
    # Bad JSON and a non-object body → 400, text/plain → 415, over the limit → 413, wrong method →
    # 405, per declared endpoint; pass-through routes are skipped (their upstream's shape).
    assert_rows(report, lambda n: n.startswith(("GET ", "POST ", "PUT ", "DELETE ", "PATCH ")),
                allowed=(PASS, SKIP))


def test_still_serving_after_bad_requests(report):
    assert_rows(report, lambda n: n == "still serving")


def test_unit_verifies(report):
    assert_rows(report, lambda n: n == "unit", allowed=(PASS, SKIP))  # skip: no systemd-analyze


def test_sigterm_drains_and_exits_0(report):
    assert_rows(report, lambda n: n == "SIGTERM drain")

