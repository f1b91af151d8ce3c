"""Chat completions answers and SSE streams as real backends send them, for the translation
unit tests, recorded from `python -m llama_cpp.server --chat_format chatml-function-calling`
(llama-cpp-python 0.3.36, SmolLM2-135M-Instruct; it reports the GGUF path as `model`, repeats
the tool call's id and name in every chunk and ignores stream_options, so no usage chunk) and
from the gateway's own ollama service with the llamacpp engine (usage chunk last). The GGUF path
is shortened; nothing else is changed."""

from __future__ import annotations

import json

# llama_cpp.server, non-streamed, plain text.
TEXT_ANSWER = {"id": "chatcmpl-61e70c5b-a20a-47d4-856d-6d171e7960cd", "object": "chat.completion", "created": 1796135661, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "message": {"content": "Hey there, hello.", "role": "assistant"}, "logprobs": None, "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}

# llama_cpp.server, non-streamed, forced function call.
TOOL_ANSWER = {"id": "chatcmpl-9743744a-d9a5-4aaa-91bf-5718dd7f5de4", "object": "chat.completion", "created": 1796135666, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "message": {"content": None, "tool_calls": [{"id": "call__0_get_weather_cmpl-9743744a-d9a5-4aaa-91bf-5718dd7f5de4", "type": "function", "function": {"name": "get_weather", "arguments": "{ \"city\": \"Paris\" }"}}], "role": "assistant", "function_call": {"name": "get_weather", "arguments": "{ \"city\": \"Paris\" }"}}, "logprobs": None, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}

# The ollama service (llamacpp engine), non-streamed, cut by max_tokens.
LENGTH_ANSWER = {"id": "chatcmpl-ba7bcc6d4fa84705bce91dfb3ea06020", "object": "chat.completion", "created": 1796135710, "model": "smollm2:135m", "choices": [{"index": 0, "finish_reason": "length", "logprobs": None, "message": {"role": "assistant", "content": "I'm glad to serve as a friendly"}}], "usage": {"prompt_tokens": 33, "completion_tokens": 8, "total_tokens": 41}}

# The ollama service (llamacpp engine), streamed with stream_options.include_usage, max_tokens 3.
TEXT_CHUNKS = [
    {"id": "chatcmpl-fe2c137d3315485c8b4cb1164a6f1c34", "object": "chat.completion.chunk", "created": 1796135708, "model": "smollm2:135m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}]},
    {"id": "chatcmpl-fe2c137d3315485c8b4cb1164a6f1c34", "object": "chat.completion.chunk", "created": 1796135708, "model": "smollm2:135m", "choices": [{"index": 0, "delta": {"content": "Ah"}, "finish_reason": None, "logprobs": None}]},
    {"id": "chatcmpl-fe2c137d3315485c8b4cb1164a6f1c34", "object": "chat.completion.chunk", "created": 1796135708, "model": "smollm2:135m", "choices": [{"index": 0, "delta": {"content": ","}, "finish_reason": None, "logprobs": None}]},
    {"id": "chatcmpl-fe2c137d3315485c8b4cb1164a6f1c34", "object": "chat.completion.chunk", "created": 1796135708, "model": "smollm2:135m", "choices": [{"index": 0, "delta": {"content": " welcome"}, "finish_reason": None, "logprobs": None}]},
    {"id": "chatcmpl-fe2c137d3315485c8b4cb1164a6f1c34", "object": "chat.completion.chunk", "created": 1796135708, "model": "smollm2:135m", "choices": [{"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}]},
    {"id": "chatcmpl-fe2c137d3315485c8b4cb1164a6f1c34", "object": "chat.completion.chunk", "created": 1796135708, "model": "smollm2:135m", "choices": [], "usage": {"prompt_tokens": 33, "completion_tokens": 3, "total_tokens": 36}},
]

# llama_cpp.server, streamed, max_tokens 3 (no usage chunk).
SERVER_TEXT_CHUNKS = [
    {"id": "chatcmpl-0d696663-2472-40a3-b651-b3dcb5a4f87e", "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "created": 1796135695, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-0d696663-2472-40a3-b651-b3dcb5a4f87e", "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "created": 1796135695, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "That"}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-0d696663-2472-40a3-b651-b3dcb5a4f87e", "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "created": 1796135695, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "'s"}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-0d696663-2472-40a3-b651-b3dcb5a4f87e", "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "created": 1796135695, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " great"}, "logprobs": None, "finish_reason": None}]},
    {"id": "chatcmpl-0d696663-2472-40a3-b651-b3dcb5a4f87e", "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "created": 1796135695, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]},
]

# llama_cpp.server, streamed, forced function call.
TOOL_CHUNKS = [
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": "assistant", "content": None, "function_call": None, "tool_calls": None}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": "{"}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": "{"}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": " "}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": " "}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": "\""}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": "\""}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": "city"}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": "city"}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": "\":"}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": "\":"}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": " \""}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": " \""}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": "Paris"}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": "Paris"}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": ",\""}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": ",\""}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": "}"}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": "}"}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": None, "logprobs": None, "delta": {"role": None, "content": None, "function_call": {"name": "get_weather", "arguments": ""}, "tool_calls": [{"index": 0, "id": "call__0_get_weather_cmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]},
    {"id": "chatcmpl-66c4e3d7-045a-46a6-9cbf-252bcef5c9f9", "object": "chat.completion.chunk", "created": 1796135682, "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "delta": {"role": None, "content": None, "function_call": None, "tool_calls": None}}]},
]



def sse(chunks: list[dict], crlf: bool = False) -> bytes:
    """The chunks as a backend's SSE bytes, `data: [DONE]` last (`crlf`: as sse-starlette
    servers that end lines with CRLF send them)."""
    nl = "\r\n" if crlf else "\n"
    out = "".join(f"data: {json.dumps(c)}{nl}{nl}" for c in chunks) + f"data: [DONE]{nl}{nl}"
    return out.encode()
