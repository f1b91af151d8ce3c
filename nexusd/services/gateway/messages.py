"""Anthropic Messages (`POST /v1/messages`, `/v1/messages/count_tokens`) ⇄ chat completions,
as pure functions: a Messages request becomes a chat request, a chat answer becomes a Message,
and a chat SSE stream becomes Anthropic's events. No I/O here (the relay is protocols.py).

Shapes follow the `anthropic` package's `types/*` (Message, TextBlock, ToolUseBlock, Usage,
Raw*Event, MessageDeltaUsage) and Anthropic's streaming reference: message_start, ping, then
per block content_block_start → content_block_delta* (text_delta | input_json_delta) →
content_block_stop, then message_delta (stop_reason, usage) and message_stop.
"""

from __future__ import annotations

import os
from typing import Any

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.chatstream import check_chat, check_fields, loads, refuse, text_of

HANDLED = frozenset({"model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
                     "tools", "tool_choice", "stream", "output_config"})
# Sent by Claude-Code-style clients; nothing a chat backend could do with them (docs/gateway.md).
IGNORED = frozenset({"metadata", "thinking", "cache_control", "service_tier", "inference_geo", "speed",
                     "diagnostics", "user_profile_id", "workspace_id",
                     # server-side context editing (a beta Claude Code sends): the gateway edits
                     # nothing, as when no edit is triggered; an overlong context fails upstream
                     "context_management"})
KNOWN = HANDLED | IGNORED
COUNT_KNOWN = KNOWN - {"max_tokens", "stop_sequences", "temperature", "top_p", "stream"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # another model's reasoning: not replayed


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


# --- request → chat request ----------------------------------------------------------------
def to_chat(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """The chat request for a Messages request. `count_only`: a count_tokens request, turned
    into a one-token probe whose answer's prompt_tokens is the count."""
    check_fields(body, COUNT_KNOWN if count_only else KNOWN, "Messages")
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise ApiError(400, "max_tokens: Field required", param="max_tokens", code="missing_required_parameter")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise refuse("max_tokens", "must be a positive integer", "invalid_value")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": blocks_text(system, "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages: Field required (a non-empty list)", param="messages",
                       code="missing_required_parameter" if raw is None else "invalid_value")
    for i, message in enumerate(raw):
        messages.extend(chat_messages(message, f"messages[{i}]"))
    chat: dict[str, Any] = {"messages": messages}
    if body.get("model") is not None:
        chat["model"] = body["model"]
    if count_only:
        chat["max_tokens"] = 1
    else:
        chat["max_tokens"] = body["max_tokens"]
        for k in ("temperature", "top_p"):
            if body.get(k) is not None:
                chat[k] = body[k]
        stops = body.get("stop_sequences")
        if stops:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise refuse("stop_sequences", "must be a list of strings", "invalid_value")
            chat["stop"] = stops
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise refuse("tools", "must be a list", "invalid_value")
        chat["tools"] = [chat_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = chat_tool_choice(body["tool_choice"])
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        fmt = config["format"]
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise refuse("output_config.format", "only {type: json_schema, schema: {...}} is supported")
        chat["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    if body.get("stream") is True and not count_only:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def blocks_text(value: Any, field: str) -> str:
    """A string, or a list of text blocks (their cache_control is accepted and ignored)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise refuse(field, "must be a string or a list of content blocks", "invalid_value")
    out = []
    for j, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            out.append(text_of(block.get("text"), f"{field}[{j}].text"))
        else:
            raise unsupported_block(kind, f"{field}[{j}]")
    return "".join(out)


def unsupported_block(kind: Any, where: str) -> ApiError:
    if kind in ("image", "document"):
        return refuse(where, f"{kind} blocks are not supported: the gateway's chat backends take text only",
                      "unsupported_content")
    return refuse(f"{where}.type", f"content blocks of type {kind!r} are not supported")


def chat_messages(message: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise refuse(where, "must be an object", "invalid_value")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise refuse(f"{where}.role", f"must be 'user' or 'assistant', not {role!r}", "invalid_value")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise refuse(f"{where}.content", "must be a string or a list of content blocks", "invalid_value")
    out: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(text_of(block.get("text"), f"{at}.text"))
        elif kind == "tool_use" and role == "assistant":
            args = block.get("input", {})
            calls.append({"id": text_of(block.get("id"), f"{at}.id"), "type": "function",
                          "function": {"name": text_of(block.get("name"), f"{at}.name"),
                                       "arguments": args if isinstance(args, str) else _dumps(args)}})
        elif kind == "tool_result" and role == "user":
            result = block.get("content", "")
            result_text = result if isinstance(result, str) else blocks_text(result, f"{at}.content")
            if block.get("is_error"):
                result_text = "Error: " + result_text  # chat has no error flag: say it in the text
            out.append({"role": "tool", "tool_call_id": text_of(block.get("tool_use_id"), f"{at}.tool_use_id"),
                        "content": result_text})
        elif kind in SKIPPED_BLOCKS:
            continue
        else:
            raise unsupported_block(kind, at)
    if role == "assistant":
        # "" with tool calls rather than null: llama-cpp-python's server refuses a null content
        turn: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if calls:
            turn["tool_calls"] = calls
        if turn["content"] or calls:
            out.append(turn)
    elif text or not out:
        out.append({"role": "user", "content": "".join(text)})  # after its tool results, as chat wants
    return out


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def chat_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise refuse(where, "must be an object", "invalid_value")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise refuse(where, f"hosted tool {kind!r} is not supported; only custom tools with input_schema are",
                     "unsupported_tool")
    fn: dict[str, Any] = {"name": text_of(tool.get("name"), f"{where}.name"),
                          "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
    if tool.get("description") is not None:
        fn["description"] = tool["description"]
    return {"type": "function", "function": fn}


def chat_tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": text_of(choice.get("name"), "tool_choice.name")}}
    raise refuse("tool_choice", f"{choice!r} is not supported (auto, any, tool, none)")


# --- chat answer → Message -----------------------------------------------------------------
def usage(chat_usage: dict[str, Any] | None) -> dict[str, int]:
    chat_usage = chat_usage or {}
    return {"input_tokens": int(chat_usage.get("prompt_tokens") or 0),
            "output_tokens": int(chat_usage.get("completion_tokens") or 0),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def stop_reason(choice: dict[str, Any], stops: list[str], called: bool) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence. Which stop sequence ended the text is known
    only when the backend says (vLLM's per-choice `stop_reason`); otherwise end_turn."""
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    if called and reason == "end_turn":
        reason = "tool_use"  # backends that answer finish_reason "stop" with tool calls
    return reason, None


def tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = loads(arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(502, f"The backend's tool call arguments are not a JSON object: {arguments[:200]!r}",
                       code="upstream_invalid_tool_call")
    return value


def from_chat(answer: dict[str, Any], model: str, stops: list[str]) -> dict[str, Any]:
    check_chat(answer, "message")
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    for call in calls:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"), "name": fn.get("name", ""),
                        "input": tool_input(fn.get("arguments") or "")})
    reason, sequence = stop_reason(choice, stops, bool(calls))
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": usage(answer.get("usage"))}


# --- chat stream → Anthropic events --------------------------------------------------------
class MessagesStream:
    """Turns chat completion chunks into Anthropic stream events (dicts with `type`)."""

    def __init__(self, model: str, stops: list[str]) -> None:
        self.model = model
        self.stops = stops
        self.index = -1  # the open content block, -1 = none
        self.open_kind: str | None = None
        self.calls: dict[int, int] = {}  # chat tool_call index → block index
        self.choice: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None
        self.pieces = 0  # content chunks: the output token estimate when the backend sends no usage

    def start(self) -> list[dict[str, Any]]:
        message: dict[str, Any] = {"id": new_id("msg"), "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": usage(None)}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        check_chat(chunk, "delta")
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.chat_usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text or delta.get("tool_calls"):
                self.pieces += 1
            if text:
                if self.open_kind != "text":
                    self._open({"type": "text", "text": ""}, "text", events)
                events.append({"type": "content_block_delta", "index": self.index,
                               "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or ():
                at = call.get("index", 0)
                fn = call.get("function") or {}
                if at not in self.calls:
                    self._open({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                                "name": fn.get("name") or "", "input": {}}, "tool_use", events)
                    self.calls[at] = self.index
                if fn.get("arguments"):
                    events.append({"type": "content_block_delta", "index": self.calls[at],
                                   "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}})
            if choice.get("finish_reason"):
                self.choice = choice
                self.finish_reason = choice["finish_reason"]
        return events

    def _open(self, block: dict[str, Any], kind: str, events: list[dict[str, Any]]) -> None:
        events.extend(self._close())
        self.index += 1
        self.open_kind = kind
        events.append({"type": "content_block_start", "index": self.index, "content_block": block})

    def _close(self) -> list[dict[str, Any]]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [{"type": "content_block_stop", "index": self.index}]

    def finish(self) -> list[dict[str, Any]]:
        events = self._close()
        reason, sequence = stop_reason(self.choice, self.stops, bool(self.calls))
        # Anthropic's usage is required; a backend that ignores stream_options.include_usage
        # (llama-cpp-python's server) streams one token a chunk: count them (docs/gateway.md).
        u = usage(self.chat_usage or {"completion_tokens": self.pieces})
        events.append({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                       "usage": {"input_tokens": u["input_tokens"], "output_tokens": u["output_tokens"]}})
        events.append({"type": "message_stop"})
        return events

    def fail(self, message: str) -> list[dict[str, Any]]:
        return [{"type": "error", "error": {"type": "api_error", "message": message}}]
