"""OpenAI tool calling on a local model, in the Hermes convention (Qwen 2.5, Hermes 2 Pro, ...).

The tools go into the system prompt inside `<tools></tools>`; the model answers a call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; earlier calls and their results go
back into the history in the same syntax (results as `<tool_response>` in a user turn). When the
GGUF's chat template handles `tools` itself, it renders them and the history instead, and its
model is expected to answer in the same `<tool_call>` syntax. `tool_choice` `required` or a named
function constrain the output with a grammar (grammar.tool_call_grammar; docs/ollama.md "Tools").
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from nexusd.runtime.errors import ApiError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')

SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools' `function` objects, checked (type function, a name, parameters an object)."""
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise ApiError(400, f"tools[{i}]: only {{'type': 'function', 'function': {{...}}}} tools are supported",
                           param=f"tools[{i}]", code="invalid_value")
        if not isinstance(fn.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fn["name"]):
            raise ApiError(400, f"tools[{i}].function.name: 1-64 letters, digits, _ . -", param=f"tools[{i}].function.name",
                           code="invalid_value")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise ApiError(400, f"tools[{i}].function.parameters: must be a JSON schema object",
                           param=f"tools[{i}].function.parameters", code="invalid_value")
        out.append(fn | {"parameters": params})
    return out


def chosen(tool_choice: Any, fns: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(mode, functions offered): mode is none, auto or forced (required or a named function)."""
    if tool_choice is None:
        return ("auto" if fns else "none"), fns
    if tool_choice in ("none", "auto"):
        return tool_choice, fns
    if tool_choice == "required":
        if not fns:
            raise ApiError(400, "tool_choice: 'required' needs tools", param="tool_choice", code="invalid_value")
        return "forced", fns
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        match = [f for f in fns if f["name"] == name]
        if not match:
            raise ApiError(400, f"tool_choice: no tool named {name!r}", param="tool_choice", code="invalid_value")
        return "forced", match
    raise ApiError(400, "tool_choice: none, auto, required or {'type': 'function', 'function': {'name': ...}}",
                   param="tool_choice", code="invalid_value")


def block(name: str, arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # shown to the model as the string it was
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CLOSE}"


def hermes_messages(messages: list[dict[str, Any]], fns: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Rewrite OpenAI messages (tools, tool_calls, tool results) for a template without tools."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = [block(c["function"]["name"], c["function"].get("arguments", "{}")) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join([content, *calls] if content else calls)})
        elif role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("tool_results"):  # consecutive results share one turn
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "tool_results": True})
        else:
            out.append({"role": role, "content": content})
    for m in out:
        m.pop("tool_results", None)
    if fns:
        listing = "\n".join(json.dumps({"type": "function", "function": f}, ensure_ascii=False) for f in fns)
        tools_text = SYSTEM.format(tools=listing)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{tools_text}"}
        else:
            out.insert(0, {"role": "system", "content": tools_text})
    return out


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates that render tools themselves: arguments as objects (the HF convention)."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                args = c["function"].get("arguments", "{}")
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except ValueError:
                    pass
                calls.append({**c, "function": {**c["function"], "arguments": args}})
            m = {**m, "tool_calls": calls, "content": m.get("content") or ""}
        out.append(m)
    return out


def parse(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool calls) of a finished answer; a block that is not a call stays content."""
    calls: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        try:
            doc = json.loads(match.group(1))
        except ValueError:
            return match.group(0)
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or "arguments" not in doc:
            return match.group(0)
        args = doc["arguments"]
        calls.append({"id": call_id(), "type": "function", "function": {
            "name": doc["name"], "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
        return ""

    rest = BLOCK.sub(take, text).strip()
    return (rest or None), calls


class ToolStream:
    """Turns growing text into OpenAI chat deltas: content until a `<tool_call>` starts, then
    tool-call deltas (index, id and name first, then argument fragments as they arrive)."""

    def __init__(self) -> None:
        self.buf, self.pos, self.state = "", 0, "content"
        self.index = -1
        self.depth, self.in_str, self.esc = 0, False, False
        self.calls = 0

    def feed(self, text: str, final: bool = False) -> list[dict[str, Any]]:
        self.buf += text
        deltas: list[dict[str, Any]] = []
        while True:
            before = (self.state, self.pos)
            if self.state == "content":
                at = self.buf.find(OPEN, self.pos)
                end = at if at >= 0 else len(self.buf) - (0 if final else _partial(self.buf, OPEN))
                if end > self.pos:
                    deltas.append({"content": self.buf[self.pos:end]})
                    self.pos = end
                if at >= 0:
                    self.pos, self.state = at + len(OPEN), "head"
            elif self.state == "head":
                m = HEAD.match(self.buf, self.pos)
                if m:
                    self.index += 1
                    self.calls += 1
                    deltas.append({"tool_calls": [{"index": self.index, "id": call_id(), "type": "function",
                                                   "function": {"name": json.loads(f'"{m.group(1)}"'), "arguments": ""}}]})
                    self.pos, self.state, self.depth, self.in_str, self.esc = m.end(), "args", 0, False, False
            elif self.state == "args":
                start = self.pos
                while self.pos < len(self.buf) and self.state == "args":
                    self._scan(self.buf[self.pos])
                    self.pos += 1
                if self.pos > start:
                    deltas.append({"tool_calls": [{"index": self.index, "function": {"arguments": self.buf[start:self.pos]}}]})
            elif self.state == "tail":
                at = self.buf.find(CLOSE, self.pos)
                if at >= 0:
                    self.pos, self.state = at + len(CLOSE), "between"
            elif self.state == "between":  # whitespace between blocks is dropped
                at = self.buf.find(OPEN, self.pos)
                if at >= 0:
                    self.pos, self.state = at + len(OPEN), "head"
            if (self.state, self.pos) == before:
                return deltas

    def _scan(self, ch: str) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif ch == "\\":
                self.esc = True
            elif ch == '"':
                self.in_str = False
        elif ch == '"':
            self.in_str = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            if self.depth == 0:
                self.state = "tail"


def _partial(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
