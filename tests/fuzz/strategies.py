"""Hypothesis strategies for the gateway's requests, from its OpenAPI document (the services'
pydantic models as JSON Schema): mostly valid bodies that reach the services, mutated ones
(a field of the wrong type, a required one missing, unknown ones), arbitrary JSON, raw bytes,
odd paths, methods and Content-Types.

A small JSON-Schema-to-strategy converter covers what pydantic emits (object, array, string,
integer, number, boolean, null, enum, const, anyOf, $ref, and their bounds). Strings stay short
on purpose: the session is about shapes and edge values, not load (the corpus has huge ones)."""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

TEXT_MAX = 24
ITEMS_MAX = 3
EDGE_INTS = [0, -1, 1, 2**31, 2**53 + 1, -(2**63), 10**30]
EDGE_FLOATS = [0.0, -0.0, 1e308, -1e308, 5e-324, 0.1]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=TEXT_MAX),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def describe(self) -> str:
        return f"{self.method} {self.path} {dict(self.headers)} {self.body[:300]!r}"


class SchemaStrategies:
    def __init__(self, document: dict[str, Any], models: dict[str, list[str]]) -> None:
        self.schemas = document["components"]["schemas"]
        self.document = document
        self.models = models  # operation -> model ids the stack serves (to reach the services)

    def value(self, schema: dict[str, Any], name: str = "", op: str = "") -> st.SearchStrategy[Any]:
        if "$ref" in schema:
            return st.deferred(lambda: self.value(self.schemas[schema["$ref"].rsplit("/", 1)[1]], name, op))
        if name == "model" and self.models.get(op):  # mostly a served model: reach the service
            served = st.sampled_from(self.models[op])
            return st.one_of(served, served, served, st.text(min_size=1, max_size=12))
        if name == "size":
            return st.one_of(st.sampled_from(["auto", "64x64", "256x256", "128x64", "1024x1024"]),
                             st.text(max_size=12))
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "anyOf" in schema:
            return st.one_of([self.value(s, name, op) for s in schema["anyOf"]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self.value({**schema, "type": k}, name, op) for k in kind])
        if kind == "object":
            return self.obj(schema, op)
        if kind == "array":
            items = self.value(schema.get("items", {}), name, op) if schema.get("items") else json_values
            lo = schema.get("minItems", 0)
            return st.lists(items, min_size=lo, max_size=max(lo, min(schema.get("maxItems", ITEMS_MAX), ITEMS_MAX)))
        if kind == "string":
            lo = schema.get("minLength", 0)
            hi = max(lo, min(schema.get("maxLength", TEXT_MAX), TEXT_MAX))
            return st.text(min_size=lo, max_size=hi)
        if kind == "integer":
            lo, hi = schema.get("minimum"), schema.get("maximum")
            edges = [v for v in EDGE_INTS if (lo is None or v >= lo) and (hi is None or v <= hi)]
            return st.integers(min_value=lo, max_value=hi) | (st.sampled_from(edges) if edges else st.nothing())
        if kind == "number":
            lo, hi = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum")
            return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False,
                             exclude_min="exclusiveMinimum" in schema) | st.sampled_from(
                [v for v in EDGE_FLOATS if (lo is None or v > lo or (v == lo and "minimum" in schema))
                 and (hi is None or v <= hi)] or [hi])
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return json_values

    def obj(self, schema: dict[str, Any], op: str) -> st.SearchStrategy[dict[str, Any]]:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fixed = {k: self.value(v, k, op) for k, v in props.items() if k in required}
        optional = {k: self.value(v, k, op) for k, v in props.items() if k not in required}
        if not props:
            return st.dictionaries(st.text(max_size=8), json_values, max_size=3)
        return st.fixed_dictionaries(fixed, optional=optional)

    # --- requests ------------------------------------------------------------------------
    def body_for(self, op: str, schema_ref: dict[str, Any]) -> st.SearchStrategy[bytes]:
        valid = self.value(schema_ref, op=op)
        return st.one_of(
            valid.map(_dump),                                         # as the model wants it
            valid.map(_dump),
            valid.flatmap(lambda doc: mutate(doc)).map(_dump),        # one thing wrong
            valid.flatmap(lambda doc: mutate(doc)).map(_dump),
            json_values.map(_dump),                                   # any JSON at all
            st.binary(max_size=64),                                   # not JSON
        )

    def requests(self) -> st.SearchStrategy[Request]:
        options: list[st.SearchStrategy[Request]] = []
        for path, methods in self.document["paths"].items():
            for method, entry in methods.items():
                op = entry["operationId"]
                if "requestBody" in entry:
                    if op not in self.models:  # no instance serves it here: its answer is a plain 503
                        continue
                    ref = entry["requestBody"]["content"]["application/json"]["schema"]
                    body = self.body_for(op, ref)
                    options.append(st.builds(Request, st.just(method.upper()), st.just(path),
                                             content_types(), body))
                else:
                    options.append(st.builds(Request, st.sampled_from([method.upper(), "GET", "HEAD"]),
                                             fill_path(path), st.just(()), st.just(b"")))
        options.append(st.builds(Request, st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS"]),
                                 odd_paths(), content_types(), st.binary(max_size=32)))
        return st.one_of(options)


def _dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def mutate(doc: Any) -> st.SearchStrategy[Any]:
    if not isinstance(doc, dict) or not doc:
        return st.just([doc])

    def drop(key: str) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k != key}

    keys = st.sampled_from(sorted(doc))
    return st.one_of(
        keys.map(drop),                                                        # a field missing
        st.tuples(keys, json_values).map(lambda kv: {**doc, kv[0]: kv[1]}),    # a field of any type
        st.tuples(st.text(min_size=1, max_size=12), json_values).map(lambda kv: {**doc, kv[0]: kv[1]}),
        st.just([doc]),                                                        # not an object
    )


def content_types() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    ctype = st.sampled_from(["application/json"] * 8 + [
        "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x", "application/json; charset=latin-1", ""])
    return ctype.map(lambda c: (("Content-Type", c),) if c else ())


def fill_path(path: str) -> st.SearchStrategy[str]:
    if "{" not in path:
        return st.just(path)
    head = path.split("{", 1)[0]
    return st.text(min_size=1, max_size=40).map(lambda t: head + urllib.parse.quote(t, safe=""))


def odd_paths() -> st.SearchStrategy[str]:
    segment = st.text(max_size=12).map(lambda t: urllib.parse.quote(t, safe=""))
    return st.one_of(
        st.lists(segment, max_size=4).map(lambda parts: "/" + "/".join(parts)),
        st.sampled_from(["/v1", "/v1/", "/v1/../v1/models", "/v1/models/..%2F..%2Fetc", "//v1/models",
                         "/v1/chat/completions/", "/V1/MODELS", "/v1/images/files/", "/api/chat",
                         "/metrics", "/readyz", "/v1/metadata", "/%00", "/v1/models/%FF%FE"]),
    )
