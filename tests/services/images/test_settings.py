"""Settings and request bounds that do not need a server."""

from __future__ import annotations

import pytest

from nexusd.runtime.errors import ApiError
from nexusd.services.images.request import (
    GenerationRequest,
    check_bounds,
    parse_size,
    resolve_steps,
)
from nexusd.services.images.settings import ImagesSettings
from tests.helpers.proc import run_service


def test_diffusers_without_model_exits_78(tmp_path):
    with run_service("images", tmp_path, wait_ready=False,
                     env={"NEXUS_IMAGES_BACKEND": "diffusers"}) as svc:
        assert svc.proc.wait(60) == 78
        assert "NEXUS_IMAGES_MODEL" in svc.logs()


def test_cache_dir_defaults_to_systemd_cache_directory(monkeypatch):
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/nexus-images")
    assert ImagesSettings().cache_dir == "/var/cache/nexus-images"


def test_sizes_within_configured_sides():
    s = ImagesSettings(min_side=64, max_side=1024, default_size="auto")
    assert parse_size("auto", s, (768, 768)) == (768, 768)
    assert parse_size("1024x1024", s, (512, 512)) == (1024, 1024)
    assert parse_size("72x64", s, (512, 512)) == (72, 64)
    for bad in ("1792x1024", "8x8", "65x64", "1024", "auto1"):
        with pytest.raises(ApiError) as err:
            parse_size(bad, s, (512, 512))
        assert err.value.status == 400 and err.value.param == "size"
    assert parse_size("auto", ImagesSettings(default_size="256x128"), (512, 512)) == (256, 128)


def test_quality_scales_default_steps_within_max():
    s = ImagesSettings(default_steps=20, max_steps=30)
    steps = {q: resolve_steps(GenerationRequest(prompt="x", quality=q), s) for q in ("low", "auto", "hd")}
    assert steps == {"low": 10, "auto": 20, "hd": 30}
    assert resolve_steps(GenerationRequest(prompt="x", quality="hd", steps=3), s) == 3


def test_bounds_from_settings():
    s = ImagesSettings(max_n=2, max_prompt_chars=10, max_steps=5)
    check_bounds(GenerationRequest(prompt="0123456789", n=2, steps=5), s)
    for body, param in (({"n": 3}, "n"), ({"prompt": "x" * 11}, "prompt"), ({"steps": 6}, "steps"),
                        ({"negative_prompt": "y" * 11}, "negative_prompt")):
        with pytest.raises(ApiError) as err:
            check_bounds(GenerationRequest(**{"prompt": "ok", **body}), s)
        assert err.value.param == param
