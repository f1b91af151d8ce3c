"""Targets measured in alternating short slices instead of one after another.

On a small shared machine the CPU a process gets per request drifts by 10-30 % over seconds
(other tenants, frequency), which swamps a 5 % difference between two targets measured 3 s
apart. Here every target keeps its connections open and the load switches between targets
every `slice_s` seconds in the order A B B A A B ... (so a linear drift cancels), and each
target's CPU is summed over its own slices only. CPU comes from the scheduler's nanosecond
counters (/proc/PID/task/*/schedstat), not the 10 ms ticks of /proc/PID/stat, so short slices
lose nothing to rounding.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from bench.gateway.run import WORKLOADS, one_request, rss_mib


def cpu_ns(pid: int) -> int:
    """Nanoseconds every thread of `pid` has spent on a CPU (field 1 of each task's schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def order(n_targets: int, slices: int) -> list[int]:
    """Which target each slice loads: forward then backward (A B B A ... for two)."""
    forward = list(range(n_targets))
    out: list[int] = []
    while len(out) < slices:
        out += forward if (len(out) // n_targets) % 2 == 0 else forward[::-1]
    return out[:slices]


async def _interleaved(targets: list[tuple[str, int, int, dict[str, str]]], workload: str, conns: int,
                       seconds: float, slice_s: float) -> list[dict]:
    path, body, _ = WORKLOADS[workload]
    pools = []
    for _name, port, _pid, headers in targets:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body
        streams = [await asyncio.open_connection("127.0.0.1", port, limit=1 << 20) for _ in range(conns)]
        pools.append((request, streams))
    stats = [{"cpu_ns": 0, "wall": 0.0, "requests": 0, "events": 0, "lat": []} for _ in targets]

    async def run_slice(i: int, until: float) -> None:
        request, streams = pools[i]
        s = stats[i]
        clock = time.perf_counter

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while clock() < until:
                t0 = clock()
                events = await one_request(reader, writer, request)
                s["events"] += events
                s["lat"].append(clock() - t0)
                s["requests"] += 1

        await asyncio.gather(*(worker(r, w) for r, w in streams))

    for i in range(len(targets)):  # warm-up: every pool once
        await run_slice(i, time.perf_counter() + min(1.0, seconds / 4))
    n_slices = max(2, round(seconds * len(targets) / slice_s))
    for i in order(len(targets), n_slices):
        pid = targets[i][2]
        cpu0, t0 = cpu_ns(pid), time.perf_counter()
        await run_slice(i, t0 + slice_s)
        stats[i]["cpu_ns"] += cpu_ns(pid) - cpu0
        stats[i]["wall"] += time.perf_counter() - t0
    for _request, streams in pools:
        for _reader, writer in streams:
            writer.close()
    out = []
    for (name, _port, pid, _headers), s in zip(targets, stats, strict=True):
        lat, n, wall = sorted(s["lat"]), s["requests"], s["wall"]
        out.append({"target": name, "workload": workload, "conns": conns, "requests": n,
                    "req_s": round(n / wall, 1), "cpu_us_per_req": round(s["cpu_ns"] / n / 1000, 1),
                    "p50_ms": round(statistics.median(lat) * 1000, 3),
                    "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3),
                    "events_s": round(s["events"] / wall, 1) if WORKLOADS[workload][2] else None,
                    "rss_mib": round(rss_mib(pid), 1), "slices": n_slices})
    return out


def measure_interleaved(targets: list[tuple[str, int, int, dict[str, str]]], workload: str, conns: int,
                        seconds: float, slice_s: float) -> list[dict]:
    """`seconds` of load per target, in slices of `slice_s`; one result per target, shaped
    like run.measure()'s."""
    import uvloop

    return uvloop.run(_interleaved(targets, workload, conns, seconds, slice_s))
