"""`NEXUS_IMAGES_*` settings, read once at start (docs/images.md)."""

from __future__ import annotations

import os
import tempfile
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from nexusd.runtime.settings import ServiceSettings, service_config


def _default_cache_dir() -> str:
    # systemd's CacheDirectory= exports $CACHE_DIRECTORY; outside systemd a private tmp folder.
    return os.environ.get("CACHE_DIRECTORY", "").split(":")[0] or os.path.join(
        tempfile.gettempdir(), f"nexus-images-{os.getuid()}"
    )


class ImagesSettings(ServiceSettings):
    model_config = service_config("images")

    port: int = Field(7860, ge=0, le=65535, description="Port to bind (0 = any free port)")
    start_timeout: float = Field(
        600, gt=0, description="Seconds to become ready (model load + warm-up); also TimeoutStartSec="
    )
    backend: Literal["stub", "diffusers"] = Field("stub", description="stub (no model) or diffusers")
    model: str = Field("", description="diffusers: a local pipeline directory or a hub id in the local HF cache")
    model_name: str = Field("", max_length=128, description="Model id to list (default: stub, or the model's folder name)")
    allow_download: bool = Field(False, description="diffusers: allow fetching the model from the hub (else local_files_only)")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="diffusers: auto = CUDA when present")
    warmup: bool = Field(True, description="diffusers: run one step before READY=1")
    max_n: int = Field(4, ge=1, le=10, description="Largest n (images per request) accepted")
    max_prompt_chars: int = Field(4000, ge=1, le=32000, description="Longest prompt accepted, in characters")
    min_side: int = Field(64, ge=8, le=8192, description="Smallest image side in pixels")
    max_side: int = Field(2048, ge=8, le=8192, description="Largest image side in pixels")
    default_size: str = Field("auto", pattern=r"^(auto|\d{2,5}x\d{2,5})$", description="Size for size=auto or none: WxH, or auto = the model's native size")
    default_steps: int = Field(25, ge=1, le=1000, description="diffusers: steps when the request names none")
    max_steps: int = Field(150, ge=1, le=10000, description="Largest steps accepted")
    guidance_scale: float = Field(7.5, ge=0, le=50, description="diffusers: guidance when the request names none")
    default_response_format: Literal["url", "b64_json"] = Field("url", description="OpenAI's default is url")
    max_queue: int = Field(8, ge=0, le=1000, description="Requests waiting for the generator before 429")
    file_ttl: float = Field(3600, gt=0, le=7 * 86400, description="Seconds a url image is kept (OpenAI: 60 minutes)")
    public_url: str = Field("", description="Base URL in url responses, e.g. the gateway's; default: this service's own")
    cache_dir: str = Field(default_factory=_default_cache_dir, description="Where url images are kept; default $CACHE_DIRECTORY or a tmp folder")

    # Field validators (not a model validator) so the error names the variable.
    @field_validator("model")
    @classmethod
    def _model_for_diffusers(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "diffusers" and not value:
            raise ValueError("backend diffusers needs a local pipeline folder or a hub id in the local cache")
        return value

    @field_validator("max_side")
    @classmethod
    def _sides(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("min_side", 0):
            raise ValueError("must not be below NEXUS_IMAGES_MIN_SIDE")
        return value
