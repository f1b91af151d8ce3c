"""Relay benchmark: the same load, in one run, direct to a fast backend, through a bare
aiohttp+uvloop proxy, and through the gateway with auth, routing, metrics and access logging on.

    .venv/bin/python bench/gateway/run.py [--seconds 5] [--conns 32] [--json out.json]

Workloads: `chat` and `sse50` (a 50-event stream) on every target; `responses`, `messages`,
`responses-sse50`, `messages-sse50` through the gateway only (its Responses / Anthropic Messages
translation to the same chat backend), compared with the gateway's chat figures of the run.
Target `gateway-upstream` is a second gateway with the same backend declared as a plain
OpenAI-compatible upstream (NEXUS_GATEWAY_UPSTREAMS) instead of a Nexus instance. Target
`gateway-limited` is the `gateway` target with a key that has every quota (rpm, tpm,
max_concurrent, none of them biting): the quota bookkeeping's cost, as limited/unlimited CPU per
request in the same run (issue 18's goal: <= 1.05); `gateway-control` is the `gateway` target
measured again, its ratio to `gateway` the noise floor of such a ratio on this machine.
`--interleave 0.25` measures the targets of a round in alternating 0.25 s slices (interleave.py)
instead of one after another: the way to resolve a few percent on a machine whose speed drifts.

Reports per target and workload: req/s, CPU µs per request of the relaying process (from
/proc/<pid>/stat; for `direct`, the backend's), p50/p99 latency, SSE events/s, and RSS.
The load generator is a small keep-alive HTTP/1.1 client on raw asyncio streams (uvloop), so it
costs less CPU than the processes it measures; on a 2-core machine all of them share the cores,
which is why CPU per request (not req/s) is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # also runnable as a plain script
from bench.common import cpu_seconds, free_port, stop_processes  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHAT = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Hello"}]}).encode()
STREAM = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Hello"}],
                     "stream": True}).encode()
# workload → (path, body, streamed). The Responses and Messages workloads run through the
# gateway only (its translation to the same chat backend) and compare with its chat figures.
WORKLOADS = {
    "chat": ("/v1/chat/completions", CHAT, False),
    "sse50": ("/v1/chat/completions", STREAM, True),
    "responses": ("/v1/responses", json.dumps({"model": "bench-model", "input": "Hello"}).encode(), False),
    "responses-sse50": ("/v1/responses", json.dumps({"model": "bench-model", "input": "Hello", "stream": True,
                                                     "store": False}).encode(), True),
    "messages": ("/v1/messages", json.dumps({"model": "bench-model", "max_tokens": 64, "messages": [
        {"role": "user", "content": "Hello"}]}).encode(), False),
    "messages-sse50": ("/v1/messages", json.dumps({"model": "bench-model", "max_tokens": 64, "stream": True,
                                                   "messages": [{"role": "user", "content": "Hello"}]}).encode(), True),
}
PROTOCOL_WORKLOADS = ("responses", "responses-sse50", "messages", "messages-sse50")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=CHAT, headers={"Content-Type": "application/json", **(headers or {})})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def one_request(reader, writer, request: bytes) -> int:
    """Send one request, read the whole answer; returns the number of SSE events."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise RuntimeError(f"status {head[9:12]!r}")
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        n = int(lower[at + 15: lower.index(b"\r\n", at)])
        await reader.readexactly(n)
        return 0
    events = 0
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return events
        events += (await reader.readexactly(size + 2)).count(b"data: ")


async def load(port: int, path: str, body: bytes, headers: dict[str, str], conns: int,
               seconds: float) -> tuple[int, int, list[float]]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body
    latencies: list[float] = []
    counts = [0, 0]
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        clock = time.perf_counter
        while clock() < deadline:
            t0 = clock()
            events = await one_request(reader, writer, request)  # (not `x += await`: lost updates)
            counts[1] += events
            latencies.append(clock() - t0)
            counts[0] += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))
    return counts[0], counts[1], latencies


def measure(name: str, port: int, pid: int, workload: str, headers: dict[str, str], conns: int,
            seconds: float) -> dict:
    import uvloop

    path, body, stream = WORKLOADS[workload]
    uvloop.run(load(port, path, body, headers, conns, min(1.0, seconds)))  # warm-up
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    n, events, lat = uvloop.run(load(port, path, body, headers, conns, seconds))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    lat.sort()
    return {"target": name, "workload": workload, "conns": conns, "requests": n,
            "req_s": round(n / wall, 1), "cpu_us_per_req": round(cpu / n * 1e6, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3),
            "events_s": round(events / wall, 1) if stream else None, "rss_mib": round(rss_mib(pid), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--targets", default="direct,bare-proxy,gateway,gateway-upstream")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every target this many times, interleaved, the order reversed every other "
                         "round (ratios use the medians; an even number balances the order)")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the gateway (experiments, e.g. NEXUS_ACCESS_LOG=false)")
    ap.add_argument("--interleave", type=float, metavar="SLICE_S",
                    help="measure the targets in alternating slices of SLICE_S seconds (interleave.py): "
                         "for ratios of a few percent on a drifting machine")
    ap.add_argument("--pin", action="store_true",
                    help="pin the relaying processes to the last CPU and the load generator and backend to the "
                         "others: on a small machine, less noise in the CPU-per-request ratios")
    ap.add_argument("--py-spy", metavar="OUT", help="profile the last of --targets (default: the gateway) with py-spy (speedscope JSON)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from nexusd.services.gateway.keys import new_key, write_keys

    tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    key, record = new_key("bench")
    # gateway-limited: the same gateway with a key that has every quota (rpm, tpm,
    # max_concurrent), each too high to bite, so every request pays the whole quota bookkeeping
    # (admission, reservation, settlement, in-flight count, x-ratelimit-* headers)
    limited_key, limited = new_key("bench-limited", rpm=10**9, tpm=10**12, max_concurrent=10**6)
    write_keys(tmp / "api-keys", [record, limited])
    bport, pport, gport, oport = free_port(), free_port(), free_port(), free_port()
    uport, uoport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and not k.endswith("_BASE_URL")}
    procs = []
    try:
        backend = subprocess.Popen([sys.executable, str(HERE / "backend.py"), str(bport)], env=env)
        procs.append(backend)
        bare = subprocess.Popen([sys.executable, str(HERE / "bare_proxy.py"), str(pport),
                                 f"http://127.0.0.1:{bport}"], env=env)
        procs.append(bare)
        gw_env = {**env, "NEXUS_GATEWAY_PORT": str(gport), "NEXUS_GATEWAY_OBS_PORT": str(oport),
                  "NEXUS_GATEWAY_KEYS_FILE": str(tmp / "api-keys"), "BENCH_BASE_URL": f"http://127.0.0.1:{bport}",
                  "NEXUS_LOG_FORMAT": "json", "NEXUS_ACCESS_LOG": "true",
                  **dict(kv.split("=", 1) for kv in args.gateway_env)}
        with open(tmp / "gateway.log", "wb") as log:  # access records are written, as in production
            gateway = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "gateway"], env=gw_env,
                                       stderr=log, stdout=log, cwd=REPO)
        procs.append(gateway)
        (tmp / "upstreams.toml").write_text(f'[upstreams.bench]\nbase_url = "http://127.0.0.1:{bport}/v1"\n'
                                            'operations = ["chat.completions"]\n')
        up_env = {k: v for k, v in gw_env.items() if k != "BENCH_BASE_URL"}
        up_env.update({"NEXUS_GATEWAY_PORT": str(uport), "NEXUS_GATEWAY_OBS_PORT": str(uoport),
                       "NEXUS_GATEWAY_UPSTREAMS": str(tmp / "upstreams.toml")})
        with open(tmp / "gateway-upstream.log", "wb") as log:
            upstream_gw = subprocess.Popen([sys.executable, "-m", "nexusd.cli", "run", "gateway"], env=up_env,
                                           stderr=log, stdout=log, cwd=REPO)
        procs.append(upstream_gw)
        auth = {"Authorization": f"Bearer {key}"}
        wait_ok(f"http://127.0.0.1:{bport}/v1/chat/completions")
        wait_ok(f"http://127.0.0.1:{pport}/v1/chat/completions")
        wait_ok(f"http://127.0.0.1:{gport}/v1/chat/completions", auth)
        wait_ok(f"http://127.0.0.1:{uport}/v1/chat/completions", auth)
        if args.pin:  # the relays on the last CPU, the load and the backend on the others
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) > 1:
                for p in procs:
                    os.sched_setaffinity(p.pid, cpus[:-1] if p is backend else cpus[-1:])
                os.sched_setaffinity(0, cpus[:-1])
        targets = [("direct", bport, backend.pid, {}), ("bare-proxy", pport, bare.pid, {}),
                   ("gateway", gport, gateway.pid, auth), ("gateway-upstream", uport, upstream_gw.pid, auth),
                   ("gateway-limited", gport, gateway.pid, {"Authorization": f"Bearer {limited_key}"}),
                   # the `gateway` target again (same key): the noise floor of a same-run ratio
                   ("gateway-control", gport, gateway.pid, auth)]
        results = []
        targets = [t for t in targets if t[0] in args.targets.split(",")]
        spy = None
        if args.py_spy:
            pid = targets[-1][2]  # the last selected target: the gateway unless --targets says otherwise
            spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-o", args.py_spy,
                                    "-f", "speedscope", "-r", "200"])
        for workload in args.workloads.split(","):
            for conns, rnd in ((c, r) for c in (1, args.conns) for r in range(args.rounds)):
                # Alternate the order every round: whichever target runs second in a round may
                # pay for the first's leftovers (GC, buffers, the OS) and get a warmer cache.
                ordered = [t for t in (targets if rnd % 2 == 0 else targets[::-1])
                           if workload not in PROTOCOL_WORKLOADS or t[0] == "gateway"]
                if args.interleave:  # all targets in one alternating run (interleave.py)
                    from bench.gateway.interleave import measure_interleaved

                    rows = measure_interleaved(ordered, workload, conns, args.seconds, args.interleave)
                else:
                    rows = [measure(name, port, pid, workload, headers, conns, args.seconds)
                            for name, port, pid, headers in ordered]
                for r in rows:
                    results.append(r)
                    print(json.dumps(r), flush=True)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        summarize(results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def summarize(results: list[dict]) -> None:
    by = {(r["target"], r["workload"], r["conns"]): r for r in results}
    print("\n| workload | conns | target | req/s | CPU µs/req (relay) | p50 ms | p99 ms | events/s | RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ev = r["events_s"] if r["events_s"] is not None else "-"
        print(f"| {r['workload']} | {r['conns']} | {r['target']} | {r['req_s']} | {r['cpu_us_per_req']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {ev} | {r['rss_mib']} |")
    print()
    cpu: dict[tuple[str, str, int], list[float]] = {}
    for r in results:
        cpu.setdefault((r["target"], r["workload"], r["conns"]), []).append(r["cpu_us_per_req"])
    for (target, workload, conns), figures in cpu.items():
        if target == "gateway-upstream" and ("gateway", workload, conns) in cpu:
            up, nexus = statistics.median(figures), statistics.median(cpu[("gateway", workload, conns)])
            print(f"{workload} at {conns} conns: plain upstream/Nexus instance CPU/req {up / nexus:.3f}x "
                  f"(medians of {len(figures)}: {up:.1f} / {nexus:.1f} µs; goal <= 1.05)")
    workloads, all_conns = sorted({r["workload"] for r in results}), sorted({r["conns"] for r in results})
    for workload, conns, other in ((w, c, o) for w in workloads for c in all_conns
                                   for o in ("gateway-limited", "gateway-control")):
        lim, gw = cpu.get((other, workload, conns)), cpu.get(("gateway", workload, conns))
        if lim and gw:
            lim_cpu, gw_cpu = statistics.median(lim), statistics.median(gw)
            # Each round measures both back to back: their ratio cancels the machine's drift
            # between rounds (other processes' load), which the medians of each do not.
            pairs = sorted(a / b for a, b in zip(lim, gw, strict=True))
            what = "quota bookkeeping" if other == "gateway-limited" else "noise floor, same key twice"
            print(f"{workload} x{conns}: {what} ({other}/gateway) CPU/req "
                  f"{lim_cpu / gw_cpu:.3f}x (medians of {len(lim)}: {lim_cpu:.1f} / {gw_cpu:.1f} µs; "
                  f"per round {statistics.median(pairs):.3f}x median, {pairs[0]:.3f}-{pairs[-1]:.3f}"
                  f"{'; goal <= 1.05' if other == 'gateway-limited' else ''})")
    conns = max(r["conns"] for r in results)
    for workload in PROTOCOL_WORKLOADS:  # translation cost against plain chat through the same gateway
        base = "sse50" if workload.endswith("sse50") else "chat"
        mine, plain = by.get(("gateway", workload, conns)), by.get(("gateway", base, conns))
        if mine and plain:
            goal = "3" if base == "sse50" else "1.5"
            per = "per streamed event (50 chat chunks a request)" if base == "sse50" else "per request"
            print(f"{workload}: gateway CPU {per} {mine['cpu_us_per_req'] / plain['cpu_us_per_req']:.2f}x "
                  f"of gateway {base} (goal <= {goal}); {mine['req_s']} vs {plain['req_s']} req/s")
    if not {"direct", "bare-proxy", "gateway"} <= {r["target"] for r in results}:
        return
    for workload in sorted({r["workload"] for r in results} - set(PROTOCOL_WORKLOADS)):
        conns = max(r["conns"] for r in results)
        bare, gw = by[("bare-proxy", workload, conns)], by[("gateway", workload, conns)]
        bare1, gw1, direct1 = (by[(t, workload, 1)] for t in ("bare-proxy", "gateway", "direct"))
        print(f"{workload}: gateway/bare throughput {gw['req_s'] / bare['req_s']:.2f}x (goal >= 0.8), "
              f"CPU/req {gw['cpu_us_per_req'] / bare['cpu_us_per_req']:.2f}x (goal <= 1.25), "
              f"added p50 at 1 conn: gateway {gw1['p50_ms'] - direct1['p50_ms']:.3f} ms, "
              f"bare {bare1['p50_ms'] - direct1['p50_ms']:.3f} ms (goal <= 0.4)")


if __name__ == "__main__":
    main()
