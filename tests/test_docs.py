"""The docs say what the code does: the external service example in docs/service-contract.md is
exactly what `nexusd new demo-svc` writes (which tests/authoring/ installs and checks), and every
gateway setting is in docs/gateway.md."""

from __future__ import annotations

import re
from pathlib import Path

from nexusd.authoring.new import render_package
from nexusd.runtime.settings import ServiceSettings, env_name
from nexusd.services.gateway.settings import GatewaySettings

DOCS = Path(__file__).resolve().parents[1] / "docs"
GENERATED_BLOCK = re.compile(r"<!-- nexusd new demo-svc: (\S+) -->\n```\w*\n(.*?)```", re.S)


def test_service_contract_shows_the_generated_package_whole():
    # Defect: no example of a service outside nexusd's tree (no pyproject table, no imports).
    blocks = dict(GENERATED_BLOCK.findall((DOCS / "service-contract.md").read_text()))
    files = render_package("demo-svc")
    assert {"pyproject.toml", "demo_svc/__init__.py"} <= set(blocks)
    for path, text in blocks.items():
        assert text == files[path], f"docs/service-contract.md's {path} differs from `nexusd new demo-svc`"


def test_every_gateway_setting_is_documented():
    # Defect: NEXUS_GATEWAY_STATIC_BACKENDS (in `nexusd env-example gateway`) was not in docs/gateway.md.
    text = (DOCS / "gateway.md").read_text()
    own = set(GatewaySettings.model_fields) - set(ServiceSettings.model_fields)
    missing = [env_name(GatewaySettings, f) for f in sorted(own)
               if env_name(GatewaySettings, f) not in text and f"`_{f.upper()}`" not in text]
    assert not missing, f"not in docs/gateway.md: {missing}"
