"""The gateway's OpenAPI document: served on 8800 behind the key, built from the services'
request models, and the committed copy in docs/ matches what the code generates."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from nexusd.services.gateway.openapi import render
from nexusd.services.ollama.request import ChatRequest

DOCS = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def test_committed_copy_matches_the_code():
    assert DOCS.read_text() == render(), \
        "docs/openapi.json drifted; regenerate: python -m nexusd.services.gateway.openapi > docs/openapi.json"


async def test_served_behind_the_key(gateway, keys):
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.api + "/openapi.json") as r:
            assert r.status == 401
        async with s.get(gateway.api + "/openapi.json",
                         headers={"Authorization": f"Bearer {keys[1]['admin']}"}) as r:
            assert r.status == 200
            doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    # the schema is the model's, with its bounds: not a hand-written copy
    assert doc["components"]["schemas"]["ChatRequest"]["properties"]["messages"] == \
        ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")["properties"]["messages"]
    assert doc["paths"]["/v1/images/files/{file_id}"]["get"]["security"] == []
