"""The `POST /v1/images/generations` body: OpenAI's fields plus documented extensions, and the
bounds that depend on configuration (n, prompt length, size, steps)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nexusd.runtime.errors import ApiError
from nexusd.services.images.settings import ImagesSettings

# OpenAI's named sizes (dall-e-2, dall-e-3, gpt-image-1); any other WxH must be a multiple of 8
# (the latent space of Stable Diffusion-style models is 1/8 of the image).
OPENAI_SIZES = ("256x256", "512x512", "1024x1024", "1792x1024", "1024x1792", "1536x1024", "1024x1536")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# OpenAI's quality names, as a multiplier of the configured steps (the stub ignores it).
QUALITY_STEPS = {"low": 0.5, "standard": 1.0, "medium": 1.0, "auto": 1.0, "high": 2.0, "hd": 2.0}
MAX_SEED = 2**32 - 1


class GenerationRequest(BaseModel):
    # Unknown fields are refused (as OpenAI does) rather than silently ignored.
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    model: str | None = Field(None, max_length=128)
    n: int = Field(1, ge=1, le=10)
    size: str = Field("auto", max_length=16)
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] = "auto"
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    user: str | None = Field(None, max_length=256)
    # Extensions (documented in docs/images.md).
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0, le=50)
    negative_prompt: str | None = None


def parse_size(text: str, settings: ImagesSettings, native: tuple[int, int]) -> tuple[int, int]:
    """`auto`, an OpenAI size, or WxH (multiples of 8) within the configured sides."""
    if text == "auto":
        text = settings.default_size
        if text == "auto":
            return native
    m = _SIZE.match(text)
    if m is None:
        raise ApiError(400, f"size: {text!r} is not 'auto' or WIDTHxHEIGHT (e.g. 1024x1024)",
                       param="size", code="invalid_value")
    width, height = int(m.group(1)), int(m.group(2))
    if text not in OPENAI_SIZES and (width % 8 or height % 8):
        raise ApiError(400, f"size: {text} must be multiples of 8", param="size", code="invalid_value")
    lo, hi = settings.min_side, settings.max_side
    if not (lo <= width <= hi and lo <= height <= hi):
        raise ApiError(400, f"size: {text} is outside {lo}..{hi} pixels per side on this server",
                       param="size", code="invalid_value")
    return width, height


def check_bounds(req: GenerationRequest, settings: ImagesSettings) -> None:
    """The limits that come from configuration, as 400 envelopes naming the field."""
    if req.n > settings.max_n:
        raise ApiError(400, f"n: at most {settings.max_n} images per request on this server",
                       param="n", code="invalid_value")
    limit = settings.max_prompt_chars
    if len(req.prompt) > limit:
        raise ApiError(400, f"prompt: longer than {limit} characters", param="prompt", code="invalid_value")
    if not req.prompt.strip():
        raise ApiError(400, "prompt: must not be blank", param="prompt", code="invalid_value")
    if req.negative_prompt is not None and len(req.negative_prompt) > limit:
        raise ApiError(400, f"negative_prompt: longer than {limit} characters",
                       param="negative_prompt", code="invalid_value")
    if req.steps is not None and req.steps > settings.max_steps:
        raise ApiError(400, f"steps: at most {settings.max_steps} on this server", param="steps",
                       code="invalid_value")


def resolve_steps(req: GenerationRequest, settings: ImagesSettings) -> int:
    if req.steps is not None:
        return req.steps
    return max(1, min(settings.max_steps, round(settings.default_steps * QUALITY_STEPS[req.quality])))
