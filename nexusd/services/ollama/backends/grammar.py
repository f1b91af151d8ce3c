"""JSON schemas → GBNF grammars for llama.cpp's grammar sampler (structured outputs, forced tool calls).

The conversion is llama-cpp-python's `SchemaConverter` (a port of llama.cpp's
json_schema_to_grammar.py); this module decides which schemas it is given. A keyword the grammar
cannot enforce is refused (`UnsupportedSchema`, a 400 naming it) rather than dropped: a
`maxLength` that is silently ignored would make "valid for the schema" a lie. The subset is
documented in docs/ollama.md ("Structured outputs").
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

# Keywords whose meaning the grammar enforces.
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
    "maxItems", "enum", "const", "anyOf", "oneOf", "$ref", "minLength", "maxLength", "pattern", "format",
}
# Keywords that say nothing about which documents are valid (annotations, containers of definitions).
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "$defs",
               "definitions", "deprecated", "readOnly", "writeOnly"}
FORMATS = {"date", "time", "date-time", "uuid"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}

# A JSON string character: no raw control characters (JSON forbids them; llama-cpp-python's
# rule lets a model put a raw newline inside a string, which json.loads then refuses).
CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


class UnsupportedSchema(ValueError):
    """The schema uses something the grammar cannot enforce; str() names it."""


def check_schema(schema: Any, where: str = "") -> None:
    """Refuse what the grammar cannot enforce, naming the keyword and where it is."""
    at = where or "(root)"
    if isinstance(schema, bool):
        if schema is False:
            raise UnsupportedSchema(f"{at}: the schema `false`")
        return
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{at}: a schema must be an object, not {type(schema).__name__}")
    for key, value in schema.items():
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise UnsupportedSchema(f"{at}: keyword {key!r} is not supported")
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in TYPES]
            if bad:
                raise UnsupportedSchema(f"{at}: type {bad[0]!r} is not a JSON schema type")
        elif key == "format" and value not in FORMATS:
            raise UnsupportedSchema(f"{at}: format {value!r} is not supported (supported: {', '.join(sorted(FORMATS))})")
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise UnsupportedSchema(f"{at}: {key} must be an object")
            for name, sub in value.items():
                check_schema(sub, f"{where}.{key}.{name}" if where else f"{key}.{name}")
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if not isinstance(value, list) or not value:
                raise UnsupportedSchema(f"{at}: {key} must be a non-empty array")
            for i, sub in enumerate(value):
                check_schema(sub, f"{where}.{key}[{i}]" if where else f"{key}[{i}]")
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            check_schema(value, f"{where}.{key}" if where else key)
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise UnsupportedSchema(f"{at}: only local $ref (#/...) are supported, not {value!r}")
        elif key in ("minLength", "maxLength", "minItems", "maxItems") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise UnsupportedSchema(f"{at}: {key} must be a non-negative integer")
        elif key == "required" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise UnsupportedSchema(f"{at}: required must be an array of names")


def _converter() -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def _add_primitive(self, name: str, rule: Any) -> str:
            if name == "char":
                return self._add_rule("char", CHAR_RULE)
            return super()._add_primitive(name, rule)

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _converted(step: Any, *args: Any) -> Any:
    try:
        return step(*args)
    except (AssertionError, KeyError, ValueError, RecursionError) as exc:
        raise UnsupportedSchema(f"cannot build a grammar for it: {exc}") from None


def _rules(schema: dict[str, Any], name: str, converter: Any) -> None:
    schema = _converted(converter.resolve_refs, copy.deepcopy(schema), "input")
    _converted(converter.visit, schema, name)


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema_json: str) -> str:  # keyed by the JSON text: property order matters
    converter = _converter()
    _rules(json.loads(schema_json), "", converter)
    return converter.format_grammar()


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF accepting exactly the JSON documents valid for `schema` (root rule `root`)."""
    check_schema(schema)
    return _schema_grammar(json.dumps(schema))


def json_object_grammar() -> str:
    """Any JSON object (`response_format: json_object`, Ollama's `format: "json"`)."""
    return _schema_grammar(json.dumps({"type": "object"}))


@functools.lru_cache(maxsize=64)
def _tool_grammar(calls_json: str, parallel: bool, opened: bool) -> str:
    converter = _converter()
    alternatives = []
    for i, (name, params) in enumerate(json.loads(calls_json)):
        # Each function's $refs point into its own parameters schema.
        params = _converted(converter.resolve_refs, params, f"fn{i}")
        alternatives.append({"type": "object", "properties": {"name": {"const": name}, "arguments": params},
                             "required": ["name", "arguments"]})
    _converted(converter.visit, {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0], "call")
    block = r'"<tool_call>\n" call "\n</tool_call>"'
    # opened: the model already wrote "<tool_call>" (tool_choice auto): the rest of that block.
    first = r'"\n"? call "\n"? "</tool_call>"' if opened else block
    root = f'{first} ("\\n" {block})*' if parallel else first
    return f"root ::= {root}\n" + converter.format_grammar()


def tool_call_grammar(functions: list[tuple[str, dict[str, Any]]], parallel: bool, opened: bool = False) -> str:
    """GBNF for one (or, with `parallel`, one or more) Hermes-style `<tool_call>` blocks, each
    `{"name": ..., "arguments": {...}}` with arguments valid for that function's schema.
    `opened`: the grammar starts after the first block's `<tool_call>`."""
    for name, params in functions:
        try:
            check_schema(params)
        except UnsupportedSchema as exc:
            raise UnsupportedSchema(f"function {name!r} parameters: {exc}") from None
    return _tool_grammar(json.dumps(functions), parallel, opened)
