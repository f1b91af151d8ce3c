"""The service registry: built-in services by name, plus any installed package that declares
an entry point in the `nexusd.services` group. `nexusd list`, `nexusd units render` and the
contract tests all read it, so a new service appears everywhere by being added here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import Distribution, EntryPoint

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


def _entry_point(name: str) -> EntryPoint | None:
    return next((ep for ep in _entry_points() if ep.name == name), None)


def load_service(name: str) -> type[Service]:
    target = BUILTIN.get(name)
    if target is None:
        ep = _entry_point(name)
        if ep is None:
            raise KeyError(name)
        cls = ep.load()
        # A plugin's version is its own package's, not nexusd's (Service.version's default).
        if ep.dist is not None and not declares_version(cls):
            cls.version = ep.dist.version
        return cls
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def declares_version(cls: type[Service]) -> bool:
    """True when the class (or a base below Service) sets `version` itself."""
    from nexusd.runtime.service import Service

    return any("version" in vars(c) for c in cls.__mro__[: cls.__mro__.index(Service)])


def distribution(name: str) -> Distribution | None:
    """The installed distribution that provides a service (nexusd for the built-in ones)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as find

    if name not in BUILTIN:
        ep = _entry_point(name)
        return ep.dist if ep is not None else None
    try:
        return find("nexusd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return None
