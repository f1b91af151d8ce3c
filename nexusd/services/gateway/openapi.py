"""The OpenAPI 3.1 document of the gateway's API (`GET /openapi.json` on 8800, behind the key;
a generated copy in docs/openapi.json, drift-tested).

Request bodies are the JSON Schemas of the pydantic models the services validate with, so the
document cannot drift from what is enforced; it is not a hand-written copy. The gateway relays
these bodies unchanged: each service validates them, the gateway reads only `model` and `stream`.
Regenerate the copy with `python -m nexusd.services.gateway.openapi > docs/openapi.json`.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from pydantic.json_schema import models_json_schema

# (method, path, operation id, "module:Model" of the request body or None, summary, needs a key)
OPERATIONS: list[tuple[str, str, str, str | None, str, bool]] = [
    ("POST", "/v1/chat/completions", "chat.completions", "nexusd.services.ollama.request:ChatRequest",
     "Chat completion (SSE with stream=true)", True),
    ("POST", "/v1/completions", "completions", "nexusd.services.ollama.request:CompletionRequest",
     "Text completion (SSE with stream=true)", True),
    ("POST", "/v1/embeddings", "embeddings", "nexusd.services.ollama.request:EmbeddingRequest",
     "Embeddings", True),
    ("POST", "/v1/images/generations", "images.generate", "nexusd.services.images.request:GenerationRequest",
     "Image generation", True),
    ("POST", "/v1/audio/speech", "audio.speech", "nexusd.services.tts.request:SpeechRequest",
     "Text to speech", True),
    ("GET", "/v1/audio/voices", "audio.voices", None, "Voices of the speech service", True),
    ("GET", "/v1/models", "models.list", None, "Models of every ready instance", True),
    ("GET", "/v1/models/{model}", "models.retrieve", None, "One model", True),
    ("GET", "/v1/images/files/{file_id}", "images.files", None,
     "A generated image (capability URL: no key)", False),
    ("GET", "/openapi.json", "gateway.openapi", None, "This document", True),
    ("GET", "/health", "health", None, "Liveness (no key)", False),
]


def _model(ref: str) -> type:
    module, _, name = ref.partition(":")
    model: type = getattr(importlib.import_module(module), name)
    return model


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
        }},
    }


def document(version: str = "") -> dict[str, Any]:
    models = {op: _model(ref) for _, _, op, ref, _, _ in OPERATIONS if ref}
    refs, defs = models_json_schema([(m, "validation") for m in models.values()],
                                    ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = {**defs.get("$defs", {}), "Error": _error_schema()}
    error = {"description": "OpenAI error envelope",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict[str, Any] = {}
    for method, path, op, ref, summary, keyed in OPERATIONS:
        entry: dict[str, Any] = {
            "operationId": op, "summary": summary,
            "responses": {"200": {"description": "OK"}, "4XX": error, "5XX": error},
        }
        if not keyed:
            entry["security"] = []
        params = [p[1:-1] for p in path.split("/") if p.startswith("{")]
        if params:
            entry["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for p in params]
        if ref:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": refs[(models[op], "validation")]}}}
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "nexusd gateway", "version": version or "0",
                 "description": "OpenAI-compatible API of the nexusd gateway. Request bodies are the "
                                "schemas the services validate with; errors are OpenAI envelopes."},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
    }


def render() -> str:
    """The committed copy: no version, so that a release does not change it."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
