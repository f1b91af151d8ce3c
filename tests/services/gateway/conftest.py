from __future__ import annotations

import pytest

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import make_keys, routable, serve, serve_gateway

INTERNAL = "internal-secret-token"


@pytest.fixture
def keys(tmp_path):
    """A keys file with an unrestricted key, a scoped one, a rate-limited one and an expired one."""
    path = tmp_path / "api-keys"
    plain = make_keys(path, {
        "admin": {},
        "chat-only": {"operations": frozenset({"chat.completions", "models.list"}),
                      "models": frozenset({"tiny-chat"})},
        "slow": {"rpm": 2},
        "old": {"expires": 1.0},
    })
    return path, plain


@pytest.fixture
async def backend():
    # The backend demands the internal token, as every service does when it is set.
    async with serve(OpenAIDouble, SharedSettings(etcd_endpoints="", internal_token=INTERNAL)) as server:
        yield server


@pytest.fixture
async def gateway(keys, backend):
    path, _ = keys
    shared = SharedSettings(etcd_endpoints="", internal_token=INTERNAL)
    async with serve_gateway(path, {"testai": backend.url}, shared=shared) as gw:
        await async_wait_for(lambda: _true(routable(gw, "chat.completions")), timeout=10,
                             what="backend routable")
        yield gw


async def _true(value: bool) -> bool:
    return value
