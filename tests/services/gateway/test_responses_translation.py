"""The Responses ⇄ chat translation (gateway/responses.py) on recorded chat shapes; every
Response and event it makes is validated by the `openai` package's own models."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway import responses
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

EVENTS = TypeAdapter(ResponseStreamEvent)
STOP = {**TEXT_CHUNKS[4], "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_request_with_instructions_tools_and_json_schema():
    chat, conversation = responses.to_chat({
        "model": "gpt-5", "input": "Weather in Paris?", "instructions": "Be brief.", "max_output_tokens": 50,
        "temperature": 0.2, "top_p": 0.9, "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        "stream": True, "metadata": {"k": "v"}, "store": True})
    assert chat == {
        "model": "gpt-5", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Weather in Paris?"}],
        "max_tokens": 50, "temperature": 0.2, "top_p": 0.9,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                    "parameters": WEATHER["parameters"]}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"},
                                                                   "strict": True}},
        "stream": True, "stream_options": {"include_usage": True}}
    assert conversation == [{"role": "user", "content": "Weather in Paris?"}]  # instructions are not kept


def test_input_items_function_round_trip_and_history():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    chat, conversation = responses.to_chat({"input": [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                                          {"type": "input_text", "text": "in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Lyon"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "20C"}]},
    ]}, history)
    assert chat["messages"] == conversation == [
        *history,
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "20C"},
    ]


def test_accepted_and_ignored_fields():
    chat, _ = responses.to_chat({"input": "x", "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"],
                                 "truncation": "auto", "prompt_cache_key": "k", "parallel_tool_calls": False,
                                 "user": "u", "service_tier": "auto"})
    assert chat == {"messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:..."}]}]},
     "input[0].content[0]"),
    ({"input": "x", "frobnicate": 1}, "frobnicate"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ({"input": "x", "background": True}, "background"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"input": "x", "text": {"format": {"type": "grammar"}}}, "text.format"),
    ({"input": []}, "input"),
    ({"input": "x", "text": "json"}, "text"),
])
def test_refused_fields_are_named(body, param):
    with pytest.raises(ApiError) as e:
        responses.to_chat(body)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


def test_text_answer_is_a_valid_response():
    out, turn = responses.from_chat(TEXT_ANSWER, responses.skeleton({"input": "hi"}, "resp_1", "smollm2"))
    r = Response.model_validate(out)
    assert r.output_text == "Hey there, hello." and r.status == "completed"
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (12, 5, 17)
    assert r.model == "smollm2"  # the routed model, not the path the backend reports
    assert turn == {"role": "assistant", "content": "Hey there, hello."}


def test_tool_answer_and_length_answer():
    out, turn = responses.from_chat(TOOL_ANSWER, responses.skeleton({"input": "hi", "tools": [WEATHER]}, "resp_2", "m"))
    r = Response.model_validate(out)
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{ "city": "Paris" }'
    assert call.call_id == "call__0_get_weather_cmpl-9743744a-d9a5-4aaa-91bf-5718dd7f5de4"
    assert turn["tool_calls"][0]["id"] == call.call_id
    out, _ = responses.from_chat(LENGTH_ANSWER, responses.skeleton({"input": "hi"}, "resp_3", "m"))
    r = Response.model_validate(out)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def run_stream(chunks: list[dict], crlf: bool = False) -> tuple[list[dict], responses.ResponsesStream]:
    stream = responses.ResponsesStream(responses.skeleton({"input": "hi"}, "resp_s", "smollm2"))
    reader = ChatStreamReader()
    events = stream.start()
    data = sse(chunks, crlf)
    for i in range(0, len(data), 7):  # cut anywhere, as TCP does
        for chunk in reader.feed(data[i:i + 7]):
            events.extend(stream.feed(chunk))
    assert reader.done
    events.extend(stream.finish())
    for e in events:
        EVENTS.validate_python(e)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, stream


def test_text_stream_events_in_documented_order():
    events, stream = run_stream([*TEXT_CHUNKS[:4], STOP, TEXT_CHUNKS[5]], crlf=True)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[2]["item"]["content"] == []  # parts arrive with content_part.added
    assert events[7]["text"] == "Ah, welcome" and events[9]["item"]["content"][0]["text"] == "Ah, welcome"
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "Ah, welcome" and final.usage.output_tokens == 3 and final.status == "completed"
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {final.output[0].id}


def test_stream_without_usage():
    events, _ = run_stream(SERVER_TEXT_CHUNKS)
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == "That's great" and final.usage is None  # the backend said nothing


def test_tool_stream_events():
    events, _ = run_stream(TOOL_CHUNKS)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"}
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert json.loads(events[-3]["arguments"]) == {"city": "Paris,"}  # what SmolLM2 said
    done = events[-2]["item"]
    assert done["type"] == "function_call" and done["name"] == "get_weather" and done["status"] == "completed"
    assert done["call_id"] == "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9"


def test_stream_that_dies_fails_cleanly():
    stream = responses.ResponsesStream(responses.skeleton({"input": "hi"}, "resp_f", "m"))
    events = stream.start() + stream.feed(TEXT_CHUNKS[1]) + stream.fail("Upstream ended the stream early")
    for e in events:
        EVENTS.validate_python(e)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["message"] == "Upstream ended the stream early"
    assert events[-2]["type"] == "response.output_item.done"  # what was open is closed first


def test_length_stream_is_incomplete():
    events, _ = run_stream(TEXT_CHUNKS)  # recorded with max_tokens 3
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("chunk", [
    {"choices": "x"}, {"choices": [5]}, {"choices": [{"delta": {"content": 5}}]},
    {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": 5}}]}}]},
    {"choices": [{"delta": {}, "finish_reason": 1}]}, {"usage": {"prompt_tokens": "7"}}, {"usage": [1]},
])
def test_a_malformed_backend_chunk_is_a_502(chunk):
    """What a backend sends crosses a process boundary: a wrong shape is its failure, told as such."""
    from nexusd.services.gateway import messages

    for stream in (responses.ResponsesStream(responses.skeleton({"input": "x"}, "r", "m")),
                   messages.MessagesStream("m", [])):
        with pytest.raises(ApiError) as e:
            stream.feed(chunk)
        assert e.value.status == 502 and e.value.code == "upstream_invalid_answer"
    with pytest.raises(ApiError):
        responses.from_chat({"choices": [{"message": 5}]}, responses.skeleton({"input": "x"}, "r", "m"))
