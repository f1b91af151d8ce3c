"""Layers: the runtime imports nothing above it (services, units, dev, cli), and a service's
static description (listeners, resources, unit needs) is read without constructing it."""

from __future__ import annotations

import subprocess
import sys

from nexusd.services.gateway import GatewayService
from nexusd.services.template import TemplateService
from nexusd.units.render import context, render_service
from tests.helpers.proc import REPO

ABOVE = ("nexusd.services", "nexusd.units", "nexusd.dev", "nexusd.cli", "nexusd.status", "nexusd.demo")


def test_the_runtime_imports_nothing_above_it():
    code = (
        "import importlib, pkgutil, sys, nexusd.runtime as rt\n"
        "for m in pkgutil.iter_modules(rt.__path__): importlib.import_module('nexusd.runtime.' + m.name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({ABOVE!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_units_render_without_constructing_the_service():
    class NeverBuilt(TemplateService):
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("the static description must not need an instance")

    ctx = context(NeverBuilt)
    assert [(li.name, li.port) for li in ctx.listeners] == [("api", 9000)]
    assert ctx.resources == TemplateService.default_resources
    assert "MemoryMax=256M" in render_service(NeverBuilt, ctx)["nexus-template.service"]


def test_the_gateway_declares_both_listeners_statically():
    ctx = context(GatewayService)  # no key store, balancer or proxy built
    assert [(li.name, li.port, li.observability) for li in ctx.listeners] == [("api", 8800, False), ("obs", 8801, True)]
