"""OpenAI Responses (`POST /v1/responses`) ⇄ chat completions, as pure functions: a Responses
request becomes a chat request, a chat answer becomes a Response object, and a chat SSE stream
becomes the Responses typed events. No I/O here (the relay is protocols.py).

Shapes follow the `openai` package's `types/responses/*` (Response, ResponseOutputMessage,
ResponseFunctionToolCall, ResponseUsage, the Response*Event classes) and OpenAI's API reference
for the event order: response.created, response.in_progress, then per output item
output_item.added → (content_part.added → output_text.delta* → output_text.done →
content_part.done | function_call_arguments.delta* → .done) → output_item.done, and last
response.completed / response.incomplete / response.failed; every event has a sequence_number.
"""

from __future__ import annotations

import os
import time
from typing import Any

from nexusd.services.gateway.chatstream import check_chat, check_fields, refuse, text_of

# What the translation honours; what clients send that changes nothing a chat backend can do
# (accepted and ignored, listed in docs/gateway.md); everything else is a 400 naming it.
HANDLED = frozenset({"model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
                     "tool_choice", "text", "stream", "metadata", "store", "previous_response_id"})
IGNORED = frozenset({"reasoning", "include", "truncation", "prompt_cache_key", "prompt_cache_retention",
                     "parallel_tool_calls", "user", "safety_identifier", "service_tier", "stream_options",
                     "max_tool_calls", "background"})
KNOWN = HANDLED | IGNORED
# Input item types that carry nothing a chat model reads (reasoning of another model).
SKIPPED_ITEMS = frozenset({"reasoning"})
FINISH_STATUS = {"length": ("incomplete", "max_output_tokens"), "content_filter": ("incomplete", "content_filter")}


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


# --- request → chat request ----------------------------------------------------------------
def to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat request for a Responses request, and the conversation (chat messages, without
    `instructions`) to keep for a later `previous_response_id`. `history`: the stored
    conversation of the previous response."""
    check_fields(body, KNOWN, "Responses")
    if body.get("background"):
        raise refuse("background", "background responses are not supported")
    conversation = list(history or [])
    conversation.extend(input_messages(body.get("input")))
    if not conversation:
        raise refuse("input", "must not be empty", "invalid_value")
    messages = conversation
    instructions = body.get("instructions")
    if instructions is not None:
        messages = [{"role": "system", "content": text_of(instructions, "instructions")}, *conversation]
    chat: dict[str, Any] = {"messages": messages}
    if body.get("model") is not None:
        chat["model"] = body["model"]
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            chat[dst] = body[src]
    tools = body.get("tools")
    if tools:
        chat["tools"] = [chat_tool(t) for t in _list(tools, "tools")]
    choice = body.get("tool_choice")
    if choice is not None:
        chat["tool_choice"] = chat_tool_choice(choice)
    text = body.get("text")
    if text is not None and not isinstance(text, dict):
        raise refuse("text", "must be an object", "invalid_value")
    fmt = response_format((text or {}).get("format"))  # text.verbosity: accepted and ignored
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, conversation


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise refuse(field, "must be a list", "invalid_value")
    return value


def input_messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, "input")):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise refuse(where, "must be an object", "invalid_value")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise refuse(f"{where}.role", f"unknown role {role!r}", "invalid_value")
            out.append({"role": "system" if role == "developer" else role,
                        "content": content_text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": text_of(item.get("call_id"), f"{where}.call_id"), "type": "function",
                    "function": {"name": text_of(item.get("name"), f"{where}.name"),
                                 "arguments": text_of(item.get("arguments", ""), f"{where}.arguments")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # consecutive calls: one assistant turn
                last.setdefault("tool_calls", []).append(call)
            else:
                # "" rather than null: llama-cpp-python's server refuses a null content
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": text_of(item.get("call_id"), f"{where}.call_id"),
                        "content": output if isinstance(output, str) else content_text(output, f"{where}.output")})
        elif kind in SKIPPED_ITEMS:
            continue
        else:
            raise refuse(f"{where}.type", f"input items of type {kind!r} are not supported "
                                          "(message, function_call, function_call_output, reasoning are)")
    return out


def content_text(content: Any, field: str) -> str:
    """Text of a message's content: a string or a list of text parts. An image or a file
    cannot reach a text-only chat model: refused, naming where it was."""
    if isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(_list(content, field)):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append(text_of(part.get("text"), f"{field}[{j}].text"))
        elif kind == "refusal":
            parts.append(text_of(part.get("refusal"), f"{field}[{j}].refusal"))
        elif kind in ("input_image", "input_file", "input_audio"):
            raise refuse(f"{field}[{j}]", f"{kind} is not supported: the gateway's chat backends take text only",
                         "unsupported_content")
        else:
            raise refuse(f"{field}[{j}].type", f"unknown content part type {kind!r}", "invalid_value")
    return "".join(parts)


def chat_tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise refuse("tools", f"hosted tool {kind!r} is not supported; only function tools are",
                     "unsupported_tool")
    fn: dict[str, Any] = {"name": text_of(tool.get("name"), "tools.name")}
    for k in ("description", "parameters", "strict"):
        if tool.get(k) is not None:
            fn[k] = tool[k]
    return {"type": "function", "function": fn}


def chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": text_of(choice.get("name"), "tool_choice.name")}}
    raise refuse("tool_choice", f"{choice!r} is not supported (auto, none, required or a function)")


def response_format(fmt: Any) -> dict[str, Any] | None:
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise refuse("text.format", f"{fmt!r} is not supported (text, json_object, json_schema)")


# --- chat answer → Response ----------------------------------------------------------------
def skeleton(body: dict[str, Any], resp_id: str, model: str, created: float | None = None) -> dict[str, Any]:
    """The Response object before any output: what response.created carries. `model`: the
    served model's id as the gateway routed it (backends may report a file path instead)."""
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    return {
        "id": resp_id, "object": "response", "created_at": int(created or time.time()),
        "status": "in_progress", "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": model, "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"), "reasoning": None,
        "store": body.get("store", True) is not False, "temperature": body.get("temperature"),
        "text": {"format": fmt or {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p"), "truncation": "disabled",
        "usage": None, "user": None, "metadata": body.get("metadata") or {},
    }


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat_usage:
        return None
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [output_text(text)]}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def finish(response: dict[str, Any], finish_reason: str | None) -> None:
    status, reason = FINISH_STATUS.get(finish_reason or "", ("completed", None))
    response["status"] = status
    response["incomplete_details"] = {"reason": reason} if reason else None
    if status == "completed":
        response["completed_at"] = int(time.time())


def from_chat(answer: dict[str, Any], response: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fill `response` (a skeleton) from a chat completion; returns it and the assistant turn
    as a chat message (for the stored conversation)."""
    check_chat(answer, "message")
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    text = message.get("content")
    if text:
        output.append(message_item(new_id("msg"), text))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name", ""),
                                fn.get("arguments") or ""))
    response["output"] = output
    response["usage"] = usage(answer.get("usage"))
    finish(response, choice.get("finish_reason"))
    return response, assistant_turn(output)


def assistant_turn(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat message that replays `output` in a later request."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    turn: dict[str, Any] = {"role": "assistant", "content": text}  # "" with tool calls, not null
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it["type"] == "function_call"]
    if calls:
        turn["tool_calls"] = calls
    return turn


# --- chat stream → Responses events --------------------------------------------------------
class ResponsesStream:
    """Turns chat completion chunks into Responses events (dicts with `type` and
    `sequence_number`). Text opens a message item; each tool call opens a function_call item;
    an item is closed when the next one opens or the stream ends."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool_call index → item
        self.finish_reason: str | None = None
        self.chat_usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        fields["type"] = kind
        fields["sequence_number"] = self.seq
        self.seq += 1
        return fields

    def start(self) -> list[dict[str, Any]]:
        snapshot = {**self.response, "output": []}
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=snapshot)]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        check_chat(chunk, "delta")
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.chat_usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                item = self.open
                if item is None or item["type"] != "message":
                    events.extend(self._close())
                    item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                            "content": []}
                    self._add(item, events)  # added with no parts yet, as OpenAI sends it
                    item["content"].append(output_text(""))
                    events.append(self.event("response.content_part.added", item_id=item["id"],
                                             output_index=item["index"], content_index=0, part=output_text("")))
                item["content"][0]["text"] += text
                events.append(self.event("response.output_text.delta", item_id=item["id"],
                                         output_index=item["index"], content_index=0, delta=text, logprobs=[]))
            for call in delta.get("tool_calls") or ():
                events.extend(self._call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _add(self, item: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
        item["index"] = len(self.output)
        self.output.append(item)
        self.open = item
        events.append(self.event("response.output_item.added", output_index=item["index"], item=_public(item)))
        return item

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            events.extend(self._close())
            item = self._add(call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "", "",
                                       "in_progress"), events)
            self.calls[index] = item
        args = fn.get("arguments")
        if args:
            item["arguments"] += args
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=item["index"], delta=args))
        return events

    def _close(self) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        events = []
        status = "incomplete" if self.finish_reason == "length" else "completed"
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", item_id=item["id"], output_index=item["index"],
                                     content_index=0, text=part["text"], logprobs=[]))
            events.append(self.event("response.content_part.done", item_id=item["id"], output_index=item["index"],
                                     content_index=0, part=part))
        else:
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                     output_index=item["index"], arguments=item["arguments"], name=item["name"]))
        item["status"] = status
        events.append(self.event("response.output_item.done", output_index=item["index"], item=_public(item)))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The closing events; after them `self.response` is the final Response object."""
        events = self._close()
        self.response["output"] = [_public(item) for item in self.output]
        self.response["usage"] = usage(self.chat_usage)
        finish(self.response, self.finish_reason)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        events.append(self.event(kind, response=self.response))
        return events

    def fail(self, message: str, code: str = "server_error") -> list[dict[str, Any]]:
        """The upstream ended early: close what is open and end with response.failed."""
        events = self._close()
        self.response["output"] = [_public(item) for item in self.output]
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        events.append(self.event("response.failed", response=self.response))
        return events


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """The item without the stream's bookkeeping, copied (later deltas must not change what
    an earlier event carried)."""
    out = {k: v for k, v in item.items() if k != "index"}
    if "content" in out:
        out["content"] = [dict(p) for p in out["content"]]
    return out
