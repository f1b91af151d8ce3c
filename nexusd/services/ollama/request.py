"""The OpenAI request bodies both engines accept, with bounds.

Unknown fields are kept (`extra="allow"`) so the `ollama` engine relays what Ollama understands
(format, keep_alive, ...) unchanged; the `llamacpp` engine acts on the fields named here and
answers any other with a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nexusd.runtime import sse
from nexusd.runtime.errors import ApiError

MAX_TEXT = 1 << 20  # characters in one prompt, message or embedding input
MAX_ITEMS = 2048  # messages, prompts or embedding inputs in one request
MAX_CHOICES = 128  # n


Text = Annotated[str, Field(max_length=MAX_TEXT)]
Texts = Annotated[list[Text], Field(max_length=MAX_ITEMS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    # str, or OpenAI's list of content parts; None for assistant tool calls.
    content: Text | Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = Field(None, max_length=MAX_ITEMS)
    tool_call_id: str | None = Field(None, max_length=256)


class _Generation(_Body):
    model: str | None = Field(None, min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    # OpenAI's own bound; the llamacpp engine allows at most NEXUS_OLLAMA_PARALLEL, the ollama engine 1.
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, max_length=4)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1, max_length=MAX_ITEMS)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: Text | Texts
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            text = self.prompt
        elif len(self.prompt) != 1:
            raise ApiError(400, "prompt: only one prompt per request is supported", param="prompt",
                           code="invalid_value")
        else:
            text = self.prompt[0]
        if not text:  # nothing to continue from: llama.cpp asserts on zero tokens (a 500)
            raise ApiError(400, "prompt: must not be empty", param="prompt", code="invalid_value")
        return text


class EmbeddingRequest(_Body):
    model: str | None = Field(None, min_length=1, max_length=256)
    input: Text | Texts
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    def inputs(self) -> list[str]:
        items = [self.input] if isinstance(self.input, str) else self.input
        if not items:
            raise ApiError(400, "input: must not be empty", param="input", code="invalid_value")
        for item in items:
            if not item or len(item) > MAX_TEXT:
                raise ApiError(400, f"input: each item must be 1..{MAX_TEXT} characters",
                               param="input", code="invalid_value")
        return items


def capped(requested: int | None, cap: int) -> int:
    """NEXUS_OLLAMA_MAX_TOKENS caps what a request may ask for (and is the default)."""
    return cap if requested is None else min(requested, cap)


# SSE framing is the runtime's (runtime/sse.py); these names are what the engines import.
sse_bytes = sse.event
SSE_DONE = sse.DONE
start_sse = sse.start
