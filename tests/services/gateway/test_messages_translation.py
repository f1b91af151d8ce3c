"""The Anthropic Messages ⇄ chat translation (gateway/messages.py) on recorded chat shapes;
every Message and event it makes is validated by the `anthropic` package's own models, and the
stream is accumulated by the package's own stream accumulator."""

from __future__ import annotations

import json

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway import messages
from nexusd.services.gateway.chatstream import ChatStreamReader
from tests.services.gateway.chat_shapes import (
    LENGTH_ANSWER,
    SERVER_TEXT_CHUNKS,
    TEXT_ANSWER,
    TEXT_CHUNKS,
    TOOL_ANSWER,
    TOOL_CHUNKS,
    sse,
)

EVENTS = TypeAdapter(RawMessageStreamEvent)
WEATHER = {"name": "get_weather", "description": "Weather in a city", "cache_control": {"type": "ephemeral"},
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_request_with_system_blocks_tools_and_history():
    chat = messages.to_chat({
        "model": "claude-sonnet-4-5", "max_tokens": 64, "stop_sequences": ["END"], "temperature": 0.5,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"},
        "metadata": {"user_id": "u1"}, "thinking": {"type": "enabled", "budget_tokens": 1024}, "stream": True,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "...", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}],
                 "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "And tomorrow?"}]},
        ]})
    assert chat == {
        "model": "claude-sonnet-4-5", "max_tokens": 64, "temperature": 0.5, "stop": ["END"],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "And tomorrow?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"],
                                                    "description": "Weather in a city"}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(("choice", "chat_choice"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none")])
def test_tool_choices(choice, chat_choice):
    chat = messages.to_chat({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": choice})
    assert chat["tool_choice"] == chat_choice


def test_error_tool_result_and_output_format():
    chat = messages.to_chat({"max_tokens": 5, "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
                             "messages": [{"role": "user", "content": [
                                 {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}]}]})
    assert chat["messages"] == [{"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}]
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}}


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
     "messages[0].content[0]"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "top_k": 5}, "top_k"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "mcp_servers": []}, "mcp_servers"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "container": "c1"}, "container"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
])
def test_refused_fields_are_named(body, param):
    with pytest.raises(ApiError) as e:
        messages.to_chat(body)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


def test_count_tokens_is_a_one_token_probe():
    chat = messages.to_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "system": "s",
                             "thinking": {"type": "disabled"}}, count_only=True)
    assert chat == {"model": "m", "max_tokens": 1,
                    "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}


def test_answers_are_valid_messages():
    m = Message.model_validate(messages.from_chat(TEXT_ANSWER, "smollm2", []))
    assert m.content[0].text == "Hey there, hello." and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (12, 5) and m.model == "smollm2"
    m = Message.model_validate(messages.from_chat(TOOL_ANSWER, "smollm2", []))
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    assert m.content[0].input == {"city": "Paris"}
    assert m.content[0].id == "call__0_get_weather_cmpl-9743744a-d9a5-4aaa-91bf-5718dd7f5de4"
    assert Message.model_validate(messages.from_chat(LENGTH_ANSWER, "m", [])).stop_reason == "max_tokens"
    vllm = {**TEXT_ANSWER, "choices": [{**TEXT_ANSWER["choices"][0], "stop_reason": "END"}]}
    m = Message.model_validate(messages.from_chat(vllm, "m", ["END"]))
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "END")


def test_bad_tool_arguments_are_a_502():
    bad = {**TOOL_ANSWER, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}}]}
    with pytest.raises(ApiError) as e:
        messages.from_chat(bad, "m", [])
    assert e.value.status == 502


def run_stream(chunks: list[dict]) -> list[dict]:
    stream = messages.MessagesStream("smollm2", [])
    reader = ChatStreamReader()
    events = stream.start()
    data = sse(chunks, crlf=True)
    for i in range(0, len(data), 5):
        for chunk in reader.feed(data[i:i + 5]):
            events.extend(stream.feed(chunk))
    events.extend(stream.finish())
    return events


def accumulate(events: list[dict]) -> Message:
    """The final Message, built as Anthropic's stream helpers build it (the package's own
    accumulator is private and changes signature between releases; the integration tests use
    the public messages.stream())."""
    message: dict = {}
    partial: dict[int, str] = {}
    for e in events:
        if e["type"] == "ping":  # not in the package's event union; its client skips pings
            assert e == {"type": "ping"}
            continue
        event = EVENTS.validate_python(e)  # each one is a valid Anthropic event
        if event.type == "message_start":
            message = event.message.model_dump()
        elif event.type == "content_block_start":
            assert event.index == len(message["content"])
            message["content"].append(event.content_block.model_dump())
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            message["content"][event.index]["text"] += event.delta.text
        elif event.type == "content_block_delta":
            partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
        elif event.type == "content_block_stop" and event.index in partial:
            message["content"][event.index]["input"] = json.loads(partial[event.index])
        elif event.type == "message_delta":
            message.update(stop_reason=event.delta.stop_reason, stop_sequence=event.delta.stop_sequence)
            message["usage"].update({k: v for k, v in event.usage.model_dump().items() if v is not None})
    assert events[-1]["type"] == "message_stop"
    return Message.model_validate(message)


def test_text_stream_events():
    events = run_stream(TEXT_CHUNKS)
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    final = accumulate(events)
    assert final.content[0].text == "Ah, welcome" and final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (33, 3)


def test_tool_stream_events():
    events = run_stream(TOOL_CHUNKS)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert {e["delta"]["type"] for e in events if e["type"] == "content_block_delta"} == {"input_json_delta"}
    final = accumulate(events)
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris,"}
    assert final.stop_reason == "tool_use" and len(final.content) == 1


def test_stream_without_usage_counts_chunks():
    """llama-cpp-python's server ignores stream_options: no usage chunk arrives."""
    final = accumulate(run_stream(SERVER_TEXT_CHUNKS))
    assert final.content[0].text == "That's great"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (0, 3)


def test_backend_that_ignores_stream_true():
    """A whole chat answer to a stream=true request becomes one chunk of the stream."""
    from nexusd.services.gateway.protocols import as_chunk

    stream = messages.MessagesStream("smollm2", [])
    events = stream.start() + stream.feed(as_chunk(TOOL_ANSWER)) + stream.finish()
    final = accumulate(events)
    assert final.content[0].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 8
