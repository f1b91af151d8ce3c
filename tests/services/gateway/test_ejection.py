"""Passive ejection of a Nexus instance whose /readyz stays 200 while its answers are 5xx: the
readiness poll between two failures must not forget the failures already counted."""

from __future__ import annotations

import openai
import pytest

from nexusd.runtime.settings import SharedSettings
from tests.helpers.net import async_wait_for
from tests.services.gateway.backend import OpenAIDouble
from tests.services.gateway.harness import routable, serve, serve_gateway


async def test_failures_across_readiness_polls_eject(keys):
    shared = SharedSettings(etcd_endpoints="", internal_token="")
    async with serve(OpenAIDouble, shared) as broken, \
            serve_gateway(keys[0], {"broken": broken.url}, shared=shared, poll_interval=60) as gw:
        async def ready() -> bool:
            return routable(gw, "chat.completions")
        await gw.service.instances.poll_all()
        await async_wait_for(ready, timeout=10, what="backend routable")
        client = openai.AsyncOpenAI(base_url=gw.api + "/v1", api_key=keys[1]["admin"], max_retries=0)
        inst = gw.service.instances.instances[broken.url]
        for n in range(1, 4):  # NEXUS_GATEWAY_EJECT_AFTER is 3
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(
                    model="always-500", messages=[{"role": "user", "content": "hi"}])
            assert inst.failures == n
            await gw.service.instances.poll_all()  # /readyz answers 200 meanwhile
        (row,) = gw.service.aggregation.report()["instances"]
        assert row["state"] == "ejected"
