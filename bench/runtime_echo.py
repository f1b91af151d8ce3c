"""Requests/s of `POST /v1/echo` on `nexusd run template` against a bare aiohttp hello-world
with the same handler work, in the same run, driven by the same load generator.

    python -m bench runtime_echo [--seconds 5] [--conns 16] [--rounds 2] [--json out.json]

The bare server runs aiohttp + uvloop with one route whose handler is the template's (the same
`parse_json` and pydantic model, the same counter, the same JSON answer) and nothing else: no request id, metrics, access log, error envelopes, internal token or body limit. The
difference is the runtime's middleware cost (goal: ≤ 20%). Both run as separate processes; the
targets alternate for `--rounds` rounds and the best round of each counts. Besides req/s, CPU
time per request of the server process (from /proc/<pid>/stat) is reported: on a shared 2-core
machine it is the steadier figure. The load generator is `wrk` when installed (Debian `wrk`),
else a small aiohttp client in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a plain script
from bench.common import cpu_seconds, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BODY = json.dumps({"message": "hello", "repeat": 2})

BARE = """
import sys, uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from nexusd.runtime.validation import parse_json
from nexusd.services.template import EchoRequest

echoes = Counter("echoes", "echo requests", registry=CollectorRegistry())

async def echo(request):  # the template's handler, line for line
    body = await parse_json(request, EchoRequest)
    echoes.inc()
    text = " ".join([body.message] * body.repeat)
    return web.json_response({"object": "echo", "message": f"echo: {text}"})

app = web.Application()
app.router.add_post("/v1/echo", echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""

WRK_LUA = f"""
wrk.method = "POST"
wrk.body = {json.dumps(BODY)}
wrk.headers["Content-Type"] = "application/json"
"""

PY_LOAD = """
import asyncio, sys, time, aiohttp, uvloop
url, seconds, conns, body = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
async def worker(session, deadline, counts):
    while time.monotonic() < deadline:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            counts[r.status == 200] += 1
async def main():
    counts = [0, 0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns)) as s:
        start = time.monotonic()
        await asyncio.gather(*(worker(s, start + seconds, counts) for _ in range(conns)))
        print(counts[1] / (time.monotonic() - start), counts[0])
uvloop.run(main())
"""


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=BODY.encode(), headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def load(url: str, seconds: float, conns: int, tmp: str) -> tuple[float, int]:
    """(successful req/s, non-2xx count)"""
    if shutil.which("wrk"):
        script = Path(tmp, "post.lua")
        script.write_text(WRK_LUA)
        out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
                             capture_output=True, text=True, check=True).stdout
        rps = float(next(line for line in out.splitlines() if line.startswith("Requests/sec:")).split()[1])
        errors = next((int(line.split()[-1]) for line in out.splitlines() if "Non-2xx" in line), 0)
        return rps, errors
    out = subprocess.run([sys.executable, "-c", PY_LOAD, url, str(seconds), str(conns), BODY],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1])


def start(target: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "NOTIFY_", "WATCHDOG_"))}
    if target == "bare":
        argv = [sys.executable, "-c", BARE, str(port)]
    else:
        argv = [sys.executable, "-m", "nexusd.cli", "run", "template"]
        env.update({"NEXUS_TEMPLATE_PORT": str(port), "NEXUS_LOG_FORMAT": "json",
                    "NEXUS_ACCESS_LOG": "off" if target == "nexusd-no-access-log" else "on"})
    # Logs go to a file (as journald would take them), not to a terminal.
    log = open(Path(tempfile.gettempdir(), f"bench-echo-{target}.log"), "wb")  # noqa: SIM115
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=log)


def measure(target: str, seconds: float, conns: int, tmp: str) -> dict[str, float]:
    port = free_port()
    proc = start(target, port)
    url = f"http://127.0.0.1:{port}/v1/echo"
    try:
        wait_up(url)
        load(url, 1, conns, tmp)  # warm-up: connections, metric children, caches
        cpu0 = cpu_seconds(proc.pid)
        rps, errors = load(url, seconds, conns, tmp)
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(30)
    return {"rps": rps, "errors": errors, "cpu_us_per_req": cpu / (rps * seconds) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    targets = ["bare", "nexusd", "nexusd-no-access-log"]
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for t in targets:
                runs[t].append(measure(t, args.seconds, args.conns, tmp))
    best = {t: max(r, key=lambda x: x["rps"]) for t, r in runs.items()}
    gen = "wrk" if shutil.which("wrk") else "python aiohttp client"
    print(f"POST /v1/echo, {args.conns} connections, {args.seconds:g} s x {args.rounds} rounds (best), "
          f"load generator: {gen}, cpus: {os.cpu_count()}")
    base = best["bare"]
    for t in targets:
        b = best[t]
        cost = 1 - b["rps"] / base["rps"]
        print(f"  {t:<22} {b['rps']:>9.0f} req/s  {b['cpu_us_per_req']:>6.0f} µs CPU/req  "
              f"cost vs bare: {cost:>6.1%} req/s, {b['cpu_us_per_req'] / base['cpu_us_per_req'] - 1:>6.1%} CPU"
              + (f"  ({b['errors']:.0f} non-2xx!)" if b["errors"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"best": best, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
