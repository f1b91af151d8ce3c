"""The /v1/metadata document: the committed JSON Schema matches the models, and a served
document validates against it."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import jsonschema

from nexusd.runtime.metadata import json_schema
from tests.runtime.probe import ProbeService
from tests.runtime.support import serve_inprocess

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "metadata.schema.json"


def test_committed_schema_matches_the_models():
    assert SCHEMA_FILE.read_text() == json_schema(), (
        "docs/metadata.schema.json drifted; regenerate with "
        "python -c 'from nexusd.runtime.metadata import json_schema; print(json_schema(), end=\"\")' "
        "> docs/metadata.schema.json"
    )


async def test_served_document_validates_and_describes_the_service():
    schema = json.loads(SCHEMA_FILE.read_text())
    async with serve_inprocess(ProbeService) as server, aiohttp.ClientSession(server.url) as http:
        async with http.get("/v1/metadata") as r:
            assert r.status == 200
            doc = await r.json()
    jsonschema.validate(doc, schema)
    assert doc["schema_version"] == "v1"
    assert doc["service"]["name"] == "probe"
    assert doc["service"]["instance_id"] == server.runtime.instance_id
    endpoints = {e["path"]: e for e in doc["endpoints"]}
    assert "/v1/headers" not in endpoints  # listed=False
    assert endpoints["/v1/small"]["max_body"] == 16
    assert endpoints["/v1/items"]["max_body"] == 1 << 20  # the service default
    assert endpoints["/api/native"]["max_body"] is None  # pass-through: the upstream decides
    assert endpoints["/v1/stream"]["streaming"] is True
    assert endpoints["/v1/items"]["operation_id"] == "probe.items"
    assert doc["resources"] == {"cpu": "1", "memory": "64Mi", "gpu": None, "gpu_memory": None}
    assert doc["limits"]["status"] in ("unenforced", "matching", "mismatch")


def test_schema_rejects_a_document_without_pinned_fields():
    schema = json.loads(SCHEMA_FILE.read_text())
    bad = {"schema_version": "v1", "service": {"name": "x", "version": "1"}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("schema accepted a document without instance_id/endpoints/models")


async def test_resources_are_overridable_in_settings():
    async with serve_inprocess(ProbeService, memory="128Mi") as server:
        assert server.service.resources.memory == "128Mi"
        assert server.service.resources.cpu == "1"
