"""The service registry: built-in services by name, plus any installed package that declares
an entry point in the `nexusd.services` group. `nexusd list`, `nexusd units render` and the
contract tests all read it, so a new service appears everywhere by being added here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nexusd.runtime.service import Service

BUILTIN: dict[str, str] = {
    "images": "nexusd.services.images:ImagesService",
    "ollama": "nexusd.services.ollama:OllamaService",
    "gateway": "nexusd.services.gateway:GatewayService",
    "stt": "nexusd.services.stt:STTService",
    "template": "nexusd.services.template:TemplateService",
    "tts": "nexusd.services.tts:TTSService",
}


def _entry_points():  # imported on use: importlib.metadata costs ~50 ms of start-up
    from importlib.metadata import entry_points

    return entry_points(group="nexusd.services")


def service_names() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in _entry_points())
    return sorted(names)


def load_service(name: str) -> type[Service]:
    target = BUILTIN.get(name)
    if target is None:
        matches = [ep for ep in _entry_points() if ep.name == name]
        if not matches:
            raise KeyError(name)
        return matches[0].load()
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
