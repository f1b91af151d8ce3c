"""The stack the fuzz session and the hostile corpus run against: a real gateway process with
real services behind it as processes — images (stub backend, small sides), tts (eSpeak NG) and
ollama (the llamacpp engine with the SmolLM2 GGUF, a small token cap and context)."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.services.gateway.harness import GatewayProcess, make_keys, run_gateway


def have_llama() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Stack:
    gateway: GatewayProcess
    key: str
    models: dict[str, list[str]]  # operation -> model ids served
    services: dict[str, object]

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.gateway.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def ready(self) -> bool:
        return self.gateway.get_json(self.gateway.obs + "/readyz")[0] == 200


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")  # one stack for the corpus and the session
    key = make_keys(tmp / "keys", {"fuzz": {}})["fuzz"]
    with contextlib.ExitStack() as stack:
        services = {
            "images": stack.enter_context(run_service("images", tmp, env={
                "NEXUS_IMAGES_BACKEND": "stub", "NEXUS_IMAGES_CACHE_DIR": str(tmp / "images"),
                "NEXUS_IMAGES_MAX_SIDE": "256", "NEXUS_IMAGES_MIN_SIDE": "64"})),
            "tts": stack.enter_context(run_service("tts", tmp, env={"NEXUS_TTS_BACKEND": "espeak"})),
        }
        if have_llama():  # the tests that need it skip, saying so, when it is missing
            services["ollama"] = stack.enter_context(run_service("ollama", tmp, ready_timeout=120, env={
                "NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_THREADS": "1",
                "NEXUS_OLLAMA_MAX_TOKENS": "4", "NEXUS_OLLAMA_CONTEXT": "512"}))
        env = {f"{name.upper()}_BASE_URL": svc.url for name, svc in services.items()}
        gw = stack.enter_context(run_gateway(tmp, {**env, "NEXUS_GATEWAY_KEYS_FILE": str(tmp / "keys"),
                                                   "NEXUS_LOG_FORMAT": "json",
                                                   "NEXUS_GATEWAY_BODY_TIMEOUT": "2"}))

        def all_ready() -> bool:
            return sum(i["state"] == "ready" for i in gw.metadata()["extra"]["instances"]) == len(services)
        wait_for(all_ready, timeout=30, what="every service routable through the gateway")
        models: dict[str, list[str]] = {}
        for route in gw.metadata()["extra"]["models"]:
            models.setdefault(route["operation_id"], []).append(route["model"])
        yield Stack(gw, key, models, services)


def get(url: str, key: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


# The fuzz session's counts, shown at the end of every run (a passing test's prints are hidden).
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    for line in SUMMARY:
        terminalreporter.write_line(line)
