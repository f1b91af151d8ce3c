"""Engine `ollama` against the Ollama API DOUBLE (tests/services/ollama/ollama_double.py):
pulls with progress and readiness, the native /api/* pass-through, error mapping, bounds,
metrics from /api/ps and from usage, and cancellation of the upstream stream."""

from __future__ import annotations

import hashlib
import json
import socket

import openai
import pytest

from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.services.ollama.support import http, metric, post_json


def client(svc) -> openai.OpenAI:
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_pulls_missing_models_with_progress_then_ready(double, notify, tmp_path):
    double.gate()
    env = {"NEXUS_OLLAMA_UPSTREAM": double.url, "NEXUS_OLLAMA_MODELS": "llama3.2,tinyllama",
           "NOTIFY_SOCKET": notify.path}
    with run_service("ollama", tmp_path, env=env, wait_ready=False) as svc:
        wait_for(lambda: "STATUS=pulling llama3.2: 25%" in notify.messages(), timeout=30, what="25% status")
        status, body = svc.get("/readyz")
        assert status == 503
        assert body["checks"]["daemon"]["ok"] and "0.6.2" in body["checks"]["daemon"]["detail"]
        assert "llama3.2 (pulling llama3.2: 25%)" in body["checks"]["models"]["error"]
        assert "READY=1" not in notify.messages()
        double.release()
        wait_for(lambda: "READY=1" in notify.messages(), timeout=30, what="READY=1 after the pull")
        assert svc.ready()
        msgs = notify.messages()
        assert "STATUS=pulling llama3.2: 100%" in msgs
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in msgs)
        assert msgs.index("STATUS=pulling llama3.2: 100%") < msgs.index("READY=1")
        pulls = [b for m, p, _, b in double.double.requests if p == "/api/pull"]
        assert pulls == [{"model": "llama3.2", "stream": True}]  # tinyllama was present already
        # Metadata: models from /api/tags, what each can do, and the defaults.
        _, meta = svc.get("/v1/metadata")
        models = {m["id"]: m for m in meta["models"]}
        assert models["llama3.2:latest"]["default_for"] == ["chat.completions", "completions"]
        assert models["all-minilm:latest"]["operations"] == ["embeddings"]
        assert models["all-minilm:latest"]["default_for"] == ["embeddings"]
        assert meta["resources"]["gpu"] == "nvidia-gpu"
        ops = {e["operation_id"] for e in meta["endpoints"]}
        assert {"chat.completions", "completions", "embeddings", "models.list", "ollama.pull"} <= ops


def test_failed_pull_keeps_not_ready(double, tmp_path):
    env = {"NEXUS_OLLAMA_UPSTREAM": double.url, "NEXUS_OLLAMA_MODELS": "nosuch"}
    with run_service("ollama", tmp_path, env=env, wait_ready=False) as svc:
        def failing():
            status, body = svc.get("/readyz")
            return status == 503 and "file does not exist" in body["checks"]["models"].get("error", "")
        wait_for(failing, timeout=30, what="pull error in /readyz")
        assert svc.get("/health")[0] == 200


def test_native_api_passes_through_unchanged(double, tmp_path):
    env = {"NEXUS_OLLAMA_UPSTREAM": double.url}
    with run_service("ollama", tmp_path, env=env) as svc:
        status, _, raw = http("GET", svc.url + "/api/tags")
        assert status == 200 and json.loads(raw) == {"models": list(double.double.present.values())}
        # A streamed /api/chat arrives as Ollama's NDJSON, line for line.
        status, headers, raw = post_json(svc.url + "/api/chat", {"model": "tinyllama", "messages": [
            {"role": "user", "content": "hi"}]}, {"X-Request-ID": "trace-123"})
        lines = [json.loads(x) for x in raw.splitlines()]
        assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
        assert [x["done"] for x in lines] == [False, False, False, True]
        assert "".join(x["message"]["content"] for x in lines) == "Hello there!"
        assert headers["X-Request-ID"] == "trace-123"
        assert double.double.requests[-1][2]["X-Request-ID"] == "trace-123"
        # Ollama's own error shape, not the OpenAI envelope.
        status, _, raw = post_json(svc.url + "/api/generate", {"model": "nope", "prompt": "x"})
        assert status == 404 and json.loads(raw) == {"error": "model 'nope' not found"}
        status, _, raw = post_json(svc.url + "/api/pull", {"model": "nosuch"})
        assert [json.loads(x) for x in raw.splitlines()][-1] == {"error": "pull model manifest: file does not exist"}
        # /api/blobs: 3 MiB, more than the /v1 body limit, streamed through; digest checked upstream.
        blob = bytes(range(256)) * (3 * 4096)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        assert http("HEAD", f"{svc.url}/api/blobs/{digest}")[0] == 404
        assert http("POST", f"{svc.url}/api/blobs/{digest}", blob)[0] == 201
        assert double.double.blobs[digest] == len(blob)
        assert http("HEAD", f"{svc.url}/api/blobs/{digest}")[0] == 200
        status, _, raw = http("POST", f"{svc.url}/api/blobs/sha256:{'0' * 64}", b"other")
        assert status == 400 and "digest mismatch" in json.loads(raw)["error"]
        # The CLI's heartbeat and routes the wrapper does not know go to the daemon too.
        assert http("GET", svc.url + "/")[2] == b"Ollama is running"
        status, _, raw = http("GET", svc.url + "/api/not-a-route")
        assert status == 404 and b"error" not in raw  # the daemon's own 404, untouched
        status, _, raw = post_json(svc.url + "/api/embed", {"model": "all-minilm", "input": ["a", "b"]})
        assert status == 200 and len(json.loads(raw)["embeddings"]) == 2


def test_v1_errors_are_openai_envelopes(double, tmp_path):
    with run_service("ollama", tmp_path, env={"NEXUS_OLLAMA_UPSTREAM": double.url}) as svc:
        c = client(svc)
        msgs = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="missing", messages=msgs)
        assert e.value.code == "model_not_found" and "try pulling it first" in e.value.message
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="crash", messages=msgs)
        assert e.value.status_code == 502 and e.value.type == "server_error"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="long", messages=msgs)
        assert e.value.code == "context_length_exceeded"
        status, headers, raw = post_json(svc.url + "/v1/chat/completions", {"model": "busy", "messages": msgs})
        assert status == 503 and headers["Retry-After"] and json.loads(raw)["error"]["type"] == "service_unavailable"
        # Bad input never reaches the daemon.
        seen = len(double.double.requests)
        for bad in ({"model": "tinyllama"}, {"model": "tinyllama", "messages": msgs, "n": 2},
                    {"model": "tinyllama", "messages": msgs, "temperature": 5},
                    {"model": "tinyllama", "messages": [{"role": "wizard", "content": "x"}]}):
            status, _, raw = post_json(svc.url + "/v1/chat/completions", bad)
            assert status == 400, bad
            assert json.loads(raw)["error"]["type"] == "invalid_request_error"
        status, _, raw = http("POST", svc.url + "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"})
        assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_json"
        assert len(double.double.requests) == seen
        assert svc.get("/health")[0] == 200


def test_daemon_down_is_503_with_retry_after(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with run_service("ollama", tmp_path, env={"NEXUS_OLLAMA_UPSTREAM": dead}, wait_ready=False) as svc:
        wait_for(lambda: svc.get("/health")[0] == 200, timeout=30, what="health")
        status, headers, raw = post_json(svc.url + "/v1/chat/completions",
                                         {"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert status == 503 and headers["Retry-After"] == "5"
        assert json.loads(raw)["error"]["code"] == "upstream_unavailable"
        status, headers, raw = http("GET", svc.url + "/api/tags")
        assert status == 503 and headers["Retry-After"] == "5" and "not reachable" in json.loads(raw)["error"]
        status, body = svc.get("/readyz")
        assert status == 503 and not body["checks"]["daemon"]["ok"]


def test_usage_metrics_bounds_and_ps_gauges(double, tmp_path):
    env = {"NEXUS_OLLAMA_UPSTREAM": double.url, "NEXUS_OLLAMA_MAX_TOKENS": "32", "NEXUS_OLLAMA_PS_INTERVAL": "0.1"}
    with run_service("ollama", tmp_path, env=env) as svc:
        c = client(svc)
        msgs = [{"role": "user", "content": "hi"}]
        r = c.chat.completions.create(model="tinyllama", messages=msgs, max_tokens=1000)
        assert r.choices[0].message.content == "Hi there!"
        assert double.double.requests[-1][3]["max_tokens"] == 32  # capped
        r = c.chat.completions.create(model="tinyllama", messages=msgs)
        assert double.double.requests[-1][3]["max_tokens"] == 32  # the cap is the default
        status, _, raw = post_json(svc.url + "/v1/chat/completions", {"messages": msgs})
        assert status == 200 and json.loads(raw)["model"] == "tinyllama:latest"  # default_for
        # Streamed, without asking for usage: the client gets none, the metrics still count it.
        chunks = list(c.chat.completions.create(model="tinyllama", messages=msgs, stream=True))
        assert all(ch.usage is None for ch in chunks) and "".join(
            ch.choices[0].delta.content or "" for ch in chunks) == "w0 w1 w2 "
        chunks = list(c.chat.completions.create(model="tinyllama", messages=msgs, stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[-1].usage.prompt_tokens == 11 and chunks[-1].usage.completion_tokens == 3
        assert metric(svc, "nexus_llm_prompt_tokens_total", model="tinyllama") == 4 * 11
        assert metric(svc, "nexus_llm_completion_tokens_total", model="tinyllama") == 4 * 3
        assert metric(svc, "nexus_llm_prompt_tokens_total", model="tinyllama:latest") == 11
        # Time to first token: the two streams; tokens/s: all four tinyllama answers (3 tokens each).
        assert metric(svc, "nexus_llm_time_to_first_token_seconds_count", model="tinyllama") == 2
        assert metric(svc, "nexus_llm_tokens_per_second_count", model="tinyllama") == 4
        e = c.embeddings.create(model="all-minilm", input=["a", "b"])
        assert len(e.data) == 2 and metric(svc, "nexus_llm_prompt_tokens_total", model="all-minilm") == 8
        wait_for(lambda: metric(svc, "nexus_ollama_loaded_models") == 1, timeout=10, what="ps gauge")
        assert metric(svc, "nexus_ollama_model_vram_bytes", model="tinyllama:latest") == 637_700_138
        models = c.models.list()
        assert {m.id for m in models.data} == {"tinyllama:latest", "all-minilm:latest"}


def test_client_disconnect_cancels_upstream_stream(double, tmp_path):
    with run_service("ollama", tmp_path, env={"NEXUS_OLLAMA_UPSTREAM": double.url}) as svc:
        body = json.dumps({"model": "slow", "stream": True, "messages": [{"role": "user", "content": "x"}]})
        with socket.create_connection(("127.0.0.1", svc.port), timeout=10) as s:
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
            got = b""
            while b"data: " not in got:  # headers first, then the first event: the stream has started
                chunk = s.recv(65536)
                assert chunk, "connection closed before the first event"
                got += chunk
        wait_for(lambda: "slow" in double.double.disconnected, timeout=10, what="upstream cancelled")
        wait_for(lambda: metric(svc, "nexus_llm_cancelled_total", model="slow") == 1, timeout=5,
                 what="cancel counted")

