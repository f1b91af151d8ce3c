"""The quota bookkeeping's cost as instructions, not CPU time: the gateway runs under Valgrind's
callgrind, and the instructions it executes per request are counted for an unlimited key and for a
limited one, in alternating rounds of the same process (issue 18's goal: limited / unlimited <= 1.05).

    python bench/gateway/instructions.py [--requests 400] [--conns 32] [--rounds 4]
                                         [--workload chat|sse50] [--limits rpm,tpm,max_concurrent]

CPU-time ratios on a small shared machine move by ±5-10 % from round to round (run.py
--interleave); instruction counts move by well under 1 %, so they resolve a few percent and show
which quota costs what (`--limits rpm` gives a key with only that limit). Instructions are not
time: cache misses and the like are not in them. Needs `valgrind` (Debian package); the gateway is
~50× slower under it, so a few hundred requests a round are enough.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # also runnable as a plain script
from bench.common import free_port, stop_processes  # noqa: E402
from bench.gateway.run import REPO, WORKLOADS, one_request, wait_ok  # noqa: E402

LIMITS = {"rpm": 10**9, "tpm": 10**12, "max_concurrent": 10**6}  # each too high to bite


async def load(port: int, path: str, body: bytes, headers: dict[str, str], requests: int, conns: int) -> None:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body
    left = [requests]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        while left[0] > 0:
            left[0] -= 1
            await one_request(reader, writer, request)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(conns)))


def instructions(profile: Path) -> int:
    """The `totals:` (or `summary:`) line of a callgrind dump: instructions executed."""
    for line in profile.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {profile}")


def counted(pid: int, out: Path, port: int, path: str, body: bytes, headers: dict[str, str], requests: int,
            conns: int) -> float:
    """Instructions per request over `requests` requests: counters zeroed before, dumped after."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    asyncio.run(load(port, path, body, headers, requests, conns))
    before = set(out.glob("callgrind.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    (dump,) = set(out.glob("callgrind.*")) - before
    return instructions(dump) / requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="requests per key and round")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4, help="the order of the two keys alternates")
    ap.add_argument("--workload", choices=("chat", "sse50"), default="chat")
    ap.add_argument("--limits", default=",".join(LIMITS), help="the limited key's quotas, of: " + ", ".join(LIMITS))
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
    from nexusd.services.gateway.keys import new_key, write_keys

    tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
    key, record = new_key("bench")
    limited_key, limited = new_key("bench-limited", **{n: LIMITS[n] for n in args.limits.split(",")})
    write_keys(tmp / "api-keys", [record, limited])
    bport, gport, oport = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_") and not k.endswith("_BASE_URL")}
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("backend.py")), str(bport)],
                                      env=env))
        gw_env = {**env, "NEXUS_GATEWAY_PORT": str(gport), "NEXUS_GATEWAY_OBS_PORT": str(oport),
                  "NEXUS_GATEWAY_KEYS_FILE": str(tmp / "api-keys"), "BENCH_BASE_URL": f"http://127.0.0.1:{bport}",
                  "NEXUS_LOG_FORMAT": "json", "NEXUS_ACCESS_LOG": "true"}  # as run.py's gateway
        with open(tmp / "gateway.log", "wb") as log:
            gateway = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.%p", "--dump-instr=no",
                 sys.executable, "-m", "nexusd.cli", "run", "gateway"],
                env=gw_env, stdout=log, stderr=log, cwd=REPO)
        procs.append(gateway)
        keys = {"unlimited": {"Authorization": f"Bearer {key}"},
                "limited": {"Authorization": f"Bearer {limited_key}"}}
        wait_ok(f"http://127.0.0.1:{bport}/v1/chat/completions")
        wait_ok(f"http://127.0.0.1:{gport}/v1/chat/completions", keys["unlimited"], timeout=300)
        path, body, _ = WORKLOADS[args.workload]
        for headers in keys.values():  # warm-up: imports, caches, the first connections
            asyncio.run(load(gport, path, body, headers, args.requests, args.conns))
        ratios = []
        for rnd in range(args.rounds):
            order = list(keys) if rnd % 2 == 0 else list(keys)[::-1]
            per = {name: counted(gateway.pid, tmp, gport, path, body, keys[name], args.requests, args.conns)
                   for name in order}
            ratios.append(per["limited"] / per["unlimited"])
            print(f"round {rnd}: unlimited {per['unlimited']:,.0f} instructions/request, limited "
                  f"{per['limited']:,.0f} (+{per['limited'] - per['unlimited']:,.0f}): {ratios[-1]:.4f}x", flush=True)
        print(f"{args.workload}, {args.conns} connections, limits {args.limits}: limited / unlimited "
              f"{statistics.median(ratios):.4f}x (median of {len(ratios)}; {min(ratios):.4f}-{max(ratios):.4f}; "
              "goal <= 1.05)")
    finally:
        stop_processes(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
