"""The Hermes tool-call convention: history rewriting, parsing finished answers, and the
incremental stream parser fed the text in every split."""

from __future__ import annotations

import json

import pytest

from nexusd.runtime.errors import ApiError
from nexusd.services.ollama.backends import tools

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa\\"ris", "n": [1, {"a": "}"}]}}\n</tool_call>'


def test_parse_separates_calls_from_content():
    content, calls = tools.parse("Let me check.\n" + CALL + "\n" + CALL.replace("get_weather", "get_time"))
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": 'Pa"ris', "n": [1, {"a": "}"}]}
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert tools.parse("<tool_call>\nnot json\n</tool_call>") == ("<tool_call>\nnot json\n</tool_call>", [])
    assert tools.parse(CALL) [0] is None


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_stream_parser_gives_the_same_calls_in_any_split(step):
    text = "Sure." + CALL + "\n" + CALL
    stream, deltas = tools.ToolStream(), []
    for i in range(0, len(text), step):
        deltas += stream.feed(text[i:i + step])
    deltas += stream.feed("", final=True)
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for c in d.get("tool_calls", []):
            call = calls.setdefault(c["index"], {"name": "", "arguments": ""})
            call["name"] += c["function"].get("name", "")
            call["arguments"] += c["function"]["arguments"]
    assert content == "Sure." and stream.calls == 2
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_weather"]
    assert all(json.loads(c["arguments"]) == {"city": 'Pa"ris', "n": [1, {"a": "}"}]} for c in calls.values())


def test_stream_parser_holds_back_only_a_possible_marker():
    stream = tools.ToolStream()
    assert stream.feed("a <tool") == [{"content": "a "}]
    assert stream.feed("s are fun") == [{"content": "<tools are fun"}]
    assert stream.feed("<", final=True) == [{"content": "<"}]


def test_history_is_rewritten_for_a_template_without_tools():
    fns = tools.functions([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    out = tools.hermes_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"},
    ], fns)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.") and '"name": "f"' in out[0]["content"]
    assert out[2] == {"role": "assistant", "content": '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n</tool_response>"}
    assert len(out) == 4


def test_tool_choice():
    fns = tools.functions([{"type": "function", "function": {"name": "f"}}])
    assert tools.chosen(None, fns)[0] == "auto" and tools.chosen(None, [])[0] == "none"
    assert tools.chosen({"type": "function", "function": {"name": "f"}}, fns) == ("forced", fns)
    for bad in ["sometimes", {"type": "function", "function": {"name": "g"}}]:
        with pytest.raises(ApiError):
            tools.chosen(bad, fns)
    with pytest.raises(ApiError):
        tools.functions([{"type": "function", "function": {"name": "has space"}}])
