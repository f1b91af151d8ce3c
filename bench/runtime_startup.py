"""Start → READY=1 of `nexusd run template`, and its idle RSS.

    python -m bench runtime_startup [--runs 7] [--json out.json]

The bench binds the NOTIFY_SOCKET itself (as systemd does) and times from spawning the process
to the READY=1 datagram. Baseline in the same run: a bare aiohttp + uvloop hello-world server
that binds its port and then sends READY=1 over the same socket, i.e. what any aiohttp service
pays before its own code. Goals (issue 2): ≤ 0.5 s to READY=1, ≤ 50 MB idle RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as a plain script
from bench.common import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASELINE = """
import asyncio, os, socket, sys
import uvloop
from aiohttp import web

async def hello(request):
    return web.json_response({"message": "hello"})

async def main():
    app = web.Application()
    app.router.add_post("/v1/echo", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    await asyncio.Event().wait()

uvloop.run(main())
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_to_ready(argv: list[str], env: dict[str, str], notify_path: str) -> tuple[float, subprocess.Popen]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(60)
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env={**env, "NOTIFY_SOCKET": notify_path}, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            if b"READY=1" in sock.recv(65536).split(b"\n"):
                return time.perf_counter() - start, proc
    finally:
        sock.close()
        os.unlink(notify_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "WATCHDOG_", "LISTEN_"))}
    env.update({"NEXUS_ACCESS_LOG": "off"})
    results: dict[str, list[float]] = {"baseline_s": [], "baseline_rss_mb": [], "ready_s": [], "rss_mb": [],
                                       "rss_after_requests_mb": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            t, proc = time_to_ready([sys.executable, "-c", BASELINE, str(free_port())], env, f"{tmp}/b{i}")
            results["baseline_s"].append(t)
            results["baseline_rss_mb"].append(rss_mb(proc.pid))
            proc.terminate()
            proc.wait(30)
            port = free_port()
            t, proc = time_to_ready([sys.executable, "-m", "nexusd.cli", "run", "template"],
                                    {**env, "NEXUS_TEMPLATE_PORT": str(port)}, f"{tmp}/n{i}")
            try:
                results["ready_s"].append(t)
                results["rss_mb"].append(rss_mb(proc.pid))
                for _ in range(100):  # idle after some traffic: metrics children, buffers
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/echo", data=b'{"message":"hi"}',
                                                 headers={"Content-Type": "application/json"})
                    urllib.request.urlopen(req, timeout=10).read()
                results["rss_after_requests_mb"].append(rss_mb(proc.pid))
            finally:
                proc.terminate()
                proc.wait(30)
    summary = {k: round(statistics.median(v), 3) for k, v in results.items()}
    summary["added_by_nexusd_s"] = round(summary["ready_s"] - summary["baseline_s"], 3)
    print(f"runs: {args.runs} (medians), cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    print(f"  bare aiohttp hello-world → READY=1    : {summary['baseline_s']:.3f} s, "
          f"RSS {summary['baseline_rss_mb']:.1f} MB")
    print(f"  nexusd run template → READY=1         : {summary['ready_s']:.3f} s (goal ≤ 0.5 s)")
    print(f"  idle RSS                              : {summary['rss_mb']:.1f} MB (goal ≤ 50 MB)")
    print(f"  idle RSS after 100 requests           : {summary['rss_after_requests_mb']:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
