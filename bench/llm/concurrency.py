"""LLM concurrency benchmark: many streams at once through `nexusd run ollama` (engine llamacpp),
continuous batching at NEXUS_OLLAMA_PARALLEL=P vs PARALLEL=1 (one generation at a time, the
engine before batching) in the same run, plus llama-cpp-python called directly for one stream,
and a raw-decode ceiling: the engine's batched decode loop (engines/batch.py) in-process, no HTTP.

    python -m bench llm --concurrency 1,2,4,8 [--tokens 64] [--threads 2] [--parallel 8] [--rounds 2]

For each level C, C streamed /v1/completions requests start together, each exactly --tokens
tokens (end-of-generation banned). Levels alternate between the two services so load from
elsewhere on the machine hits both alike. Reported per service and level: aggregate tokens/s
(all tokens / wall time of the level), per-stream tokens/s (tokens / that request's own time,
median and min), TTFT p50/p99, and the service's peak RSS. Goals (issue 15): at 8 streams >= 2x
the 1-stream aggregate; 1 stream >= 0.95x direct; min per-stream >= 0.5x the mean.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import free_port
from bench.llm.run import PROMPT, REPO, direct_run, eog_bias


def start_service(gguf: str, threads: int, ctx: int, parallel: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update({"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_PORT": str(port), "NEXUS_OLLAMA_THREADS": str(threads),
                "NEXUS_OLLAMA_CONTEXT": str(ctx), "NEXUS_OLLAMA_PARALLEL": str(parallel), "NEXUS_ACCESS_LOG": "false",
                "NEXUS_OLLAMA_MAX_QUEUE": "64", "NEXUS_LOG_FORMAT": "json", "NEXUS_OLLAMA_GGUF": f"smollm2:135m={gguf}"})
    log = tempfile.TemporaryFile()
    svc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "ollama"], env=env, stdout=log, stderr=log,
                           cwd=REPO)
    deadline = time.monotonic() + 180
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return svc, port
        except OSError:
            pass
        if time.monotonic() > deadline or svc.poll() is not None:
            log.seek(0)
            sys.exit("service did not become ready:\n" + log.read().decode()[-2000:])
        time.sleep(0.2)


def stream(port: int, tokens: int, bias: dict[str, float], seed: int, out: list[dict[str, float]]) -> None:
    body = json.dumps({"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.8, "top_p": 0.95, "seed": seed,
                       "stream": True, "stream_options": {"include_usage": True}, "logit_bias": bias})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    first = last = 0.0
    usage = None
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        doc = json.loads(line[6:])
        if doc.get("usage"):
            usage = doc["usage"]
        elif doc["choices"] and doc["choices"][0]["text"]:
            last = time.perf_counter()
            first = first or last
    conn.close()
    assert usage and usage["completion_tokens"] == tokens, usage
    out.append({"start": start, "end": last, "ttft": first - start, "tps": tokens / (last - start),
                "decode": (tokens - 1) / (last - first) if last > first else 0.0})


def level(port: int, c: int, tokens: int, bias: dict[str, float], seed: int) -> dict[str, float | list[float]]:
    out: list[dict[str, float]] = []
    threads = [threading.Thread(target=stream, args=(port, tokens, bias, seed + i, out)) for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == c, "a stream failed"
    wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    return {"aggregate": c * tokens / wall, "per_stream": [r["tps"] for r in out], "ttft": [r["ttft"] for r in out],
            "decode": [r["decode"] for r in out]}


def raw_level(llm, parallel: int, ctx: int, c: int, tokens: int, bias: dict[int, float], seed: int) -> float:
    """Aggregate tokens/s of C sequences through a Batcher alone (built per call: same settings)."""
    import llama_cpp

    from nexusd.services.ollama.backends.batch import Batcher
    from nexusd.services.ollama.backends.sampling import SamplerChain, SamplingParams
    from nexusd.services.ollama.backends.sequence import GenParams, Sequence

    vocab = llm._model.vocab
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    b = Batcher(llm._model.model, llm.context_params, llm.n_vocab(), parallel, ctx, 512, "raw")
    try:
        seqs = [Sequence(prompt, GenParams(max_tokens=tokens), SamplerChain(vocab, llm.n_vocab(), SamplingParams(
            temperature=0.8, top_p=0.95, seed=seed + i, logit_bias=bias)), lambda t: llm.detokenize([t]),
            lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))) for i in range(c)]
        t0 = time.perf_counter()
        futures = [b.submit(s, None, lambda: None, threading.Event()) for s in seqs]
        n = sum(f.result().completion_tokens for f in futures)
        return n / (time.perf_counter() - t0)
    finally:
        b.close()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main(args) -> int:
    import llama_cpp

    from nexusd.services.ollama.backends.llamacpp import default_gguf

    gguf = args.gguf or default_gguf()
    levels = [int(x) for x in args.concurrency.split(",")]
    parallel = args.parallel or max(levels)
    llm = llama_cpp.Llama(gguf, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    bias_int = eog_bias(llm)
    bias = {str(k): v for k, v in bias_int.items()}
    services = {f"PARALLEL={parallel}": start_service(gguf, args.threads, args.ctx, parallel),
                "PARALLEL=1": start_service(gguf, args.threads, args.ctx, 1)}
    results: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in services}
    direct: list[float] = []
    raw: dict[int, list[float]] = {c: [] for c in levels}
    try:
        for _, port in services.values():
            level(port, 1, 8, bias, 0)  # warm-up
        direct_run(llm, 8, bias_int, 0)
        for r in range(args.rounds):
            direct.append(direct_run(llm, args.tokens, bias_int, r + 1)["tps"])
            for c in levels:
                raw[c].append(raw_level(llm, parallel, args.ctx, c, args.tokens, bias_int, 100 * r))
                for name, (_, port) in services.items():
                    results[name][c].append(level(port, c, args.tokens, bias, 100 * r))
        rss = {name: peak_rss_mib(svc.pid) for name, (svc, _) in services.items()}
    finally:
        for svc, _ in services.values():
            svc.terminate()
            svc.wait(30)
    print(f"{Path(gguf).name}, {args.threads} threads, ctx {args.ctx}/sequence, {args.tokens} tokens per stream, "
          f"{args.rounds} rounds (levels alternate between the services), {os.cpu_count()} CPUs")
    print(f"direct llama-cpp-python, 1 stream, decode tok/s (median): {statistics.median(direct):.1f}")
    print(f"{'service':14}{'streams':>8}{'aggr tok/s':>12}{'vs 1 strm':>10}{'per-stream med':>16}{'min':>8}"
          f"{'TTFT p50 ms':>13}{'p99 ms':>9}")
    summary: dict[str, dict] = {}
    for name, by_level in results.items():
        base = statistics.median(x["aggregate"] for x in by_level[levels[0]])
        summary[name] = {"rss_mib": rss[name]}
        for c, runs in by_level.items():
            agg = statistics.median(x["aggregate"] for x in runs)
            per = [v for x in runs for v in x["per_stream"]]
            ttft = [v for x in runs for v in x["ttft"]]
            summary[name][c] = {"aggregate": agg, "per_stream_median": statistics.median(per),
                                "per_stream_min": min(per), "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99)}
            print(f"{name:14}{c:>8}{agg:>12.1f}{agg / base:>10.2f}{statistics.median(per):>16.1f}{min(per):>8.1f}"
                  f"{pct(ttft, 0.5) * 1000:>13.0f}{pct(ttft, 0.99) * 1000:>9.0f}")
        print(f"{name:14} peak RSS {rss[name]:.0f} MiB")
    base = statistics.median(raw[levels[0]])
    for c in levels:
        agg = statistics.median(raw[c])
        print(f"{'raw decode':14}{c:>8}{agg:>12.1f}{agg / base:>10.2f}   (batch.Batcher in-process, PARALLEL={parallel})")
    if levels[0] == 1:
        one = statistics.median(x["decode"][0] for x in results[f"PARALLEL={parallel}"][1])
        print(f"1 stream decode tok/s through the service (PARALLEL={parallel}) / direct: "
              f"{one / statistics.median(direct):.3f} (goal >= 0.95)")
    if args.json:
        args.json.write_text(json.dumps({"direct_tps": direct, "raw": raw, "results": results, "summary": summary}, indent=2,
                                        default=str))
    return 0
