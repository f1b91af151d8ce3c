"""Runs a service as a well-behaved systemd daemon, in explicit phases:

  settings → bind (or inherit LISTEN_FDS) → start → ready (READY=1) → serve → stop.

Signals only set flags: SIGTERM/SIGINT → stop (STOPPING=1, deregister, stop accepting, drain in
flight requests within NEXUS_<SERVICE>_DRAIN_TIMEOUT, exit 0); SIGHUP → the service's reload
hook between RELOADING=1 and READY=1. The watchdog pings from a task on the event loop.
Stopping runs each phase's cleanup, last phase first, each one even when an earlier one failed
(logged), as svcs' Registry.aclose() does: a service whose stop() raises still gets its
background tasks cancelled, its HTTP client closed and its access records flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from nexusd.runtime import cgroup, systemd
from nexusd.runtime.access import AccessLog
from nexusd.runtime.app import build_app
from nexusd.runtime.context import Runtime
from nexusd.runtime.gpu import apply_gpu_memory_limit
from nexusd.runtime.health import Readiness
from nexusd.runtime.registry import EtcdRegistry, NullRegistry, registration_record
from nexusd.runtime.service import Service
from nexusd.runtime.settings import (
    EX_CONFIG,
    ConfigError,
    ServiceSettings,
    SharedSettings,
    load_settings,
)

log = logging.getLogger("nexusd.server")
ACCEPT_GRACE = 0.25  # s for just-accepted connections to send their request before the drain


class Server:
    def __init__(self, service_cls: type[Service], settings: ServiceSettings, shared: SharedSettings,
                 access: AccessLog | None = None) -> None:
        """`access`: where access records go (None: through `logging`, for in-process servers)."""
        self.access = access
        self.runtime = Runtime(service_cls.name, shared)
        self.service = service_cls(settings, shared, self.runtime)
        self.runtime.metrics.identify(self.service.name, self.service.version, self.runtime.instance_id)
        self.settings = settings
        self.shared = shared
        self.readiness = Readiness(self.service.checks())
        self.runners: list[web.AppRunner] = []
        self.registry: EtcdRegistry | NullRegistry = NullRegistry()
        self.should_exit = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.bound: dict[str, tuple[str, int]] = {}
        self.tls_listeners: set[str] = set()  # advertised as https://
        self._tasks: list[asyncio.Task[None]] = []

    # --- phases ------------------------------------------------------------------------
    def check_limits(self) -> None:
        limits = cgroup.compare(self.service.resources, root=Path(self.shared.cgroup_root))
        self.runtime.limits = limits
        if limits.status == "mismatch":
            if self.shared.strict_limits:
                raise ConfigError("NEXUS_STRICT_LIMITS: " + "; ".join(limits.warnings))
            self.readiness.warnings.extend(limits.warnings)
            log.warning("cgroup limits differ from declared resources: %s", "; ".join(limits.warnings))

    async def bind(self) -> None:
        inherited = systemd.listen_fds()
        listeners = self.service.listeners()
        self.tls_listeners = {li.name for li in listeners if li.ssl_context is not None}
        for i, listener in enumerate(listeners):
            app = build_app(self.service, listener, self.readiness,
                            self.access.write if self.access is not None else None)
            # handler_cancellation: a client that disconnects cancels its handler, the one way
            # every service learns it (a relay stops its upstream call; work in a worker thread
            # stops at its next step through admission.in_worker); the pipeline records 499.
            runner = web.AppRunner(app, shutdown_timeout=self.settings.drain_timeout, access_log=None,
                                   handler_cancellation=True)
            await runner.setup()
            self.runners.append(runner)
            sock = inherited.get(listener.name) or (inherited.get(f"fd{i}") if inherited else None)
            if sock is None and len(inherited) == 1 and len(listeners) == 1:
                sock = next(iter(inherited.values()))
            site: web.BaseSite
            if sock is not None:
                site = web.SockSite(runner, sock, ssl_context=listener.ssl_context)
                log.info("serving %s on inherited socket %s", listener.name, sock.getsockname())
            else:
                site = web.TCPSite(runner, listener.host, listener.port, reuse_address=True,
                                   ssl_context=listener.ssl_context)
            await site.start()
            server = getattr(site, "_server", None)
            actual = server.sockets[0].getsockname() if server and server.sockets else (listener.host, listener.port)
            self.bound[listener.name] = (actual[0], actual[1])
        self.runtime.base_url = self.advertised_url()

    def advertised_url(self) -> str:
        if self.shared.advertise_url:
            return self.shared.advertise_url.rstrip("/")
        name = "api" if "api" in self.bound else next(iter(self.bound))
        host, port = self.bound[name]
        if host in ("0.0.0.0", "::", ""):  # never advertise the wildcard address
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if name in self.tls_listeners else 'http'}://{host}:{port}"

    async def start(self) -> None:
        self.runtime.status("starting")
        await self.service.start()
        # A safety net for services whose module imported torch; backends that load torch later
        # apply the cap themselves (see runtime/gpu.py).
        apply_gpu_memory_limit(self.shared.gpu_memory or self.service.resources.gpu_memory)

    async def wait_ready(self) -> None:
        """READY=1 once the checks pass, or at the start timeout (then /readyz stays 503)."""
        deadline = time.monotonic() + self.settings.start_timeout
        delay = 0.01  # first re-check soon: a fast service is ready within a few ms
        while not self.should_exit.is_set():
            report = await self.readiness.run()
            if report.ready:
                self.runtime.ready = True
                self.runtime.metrics.ready.set(1)
                self.runtime.notifier.ready(self.ready_status())
                log.info("ready: %s", self.ready_status())
                return
            if time.monotonic() >= deadline:
                why = f"not ready after {self.settings.start_timeout:g}s: {report.failing()}"
                self.readiness.gave_up = why
                self.runtime.notifier.ready(why)
                log.error("%s; READY=1 sent anyway, /readyz stays 503", why)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), delay)
            delay = min(delay * 2, 1.0)

    def ready_status(self) -> str:
        warnings = self.readiness.warnings
        text = f"serving on {self.runtime.base_url}"
        return f"{text} (warning: {'; '.join(warnings)})" if warnings else text

    async def register(self) -> None:
        if not self.shared.etcd_endpoint_list or self.should_exit.is_set():
            return
        record = registration_record(self.service.name, self.runtime.instance_id,
                                     self.runtime.base_url, self.service.version)
        self.registry = EtcdRegistry(self.shared, record)
        await self.registry.start()

    async def serve(self) -> None:
        while not self.should_exit.is_set():
            waiters = [asyncio.ensure_future(self.should_exit.wait()),
                       asyncio.ensure_future(self.reload_requested.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self.reload_requested.is_set() and not self.should_exit.is_set():
                self.reload_requested.clear()
                await self.reload()

    async def reload(self) -> None:
        self.runtime.notifier.reloading()
        log.info("reloading")
        try:
            await self.service.reload()
        except Exception:  # a bad reload keeps the old state and keeps serving
            log.exception("reload failed; keeping the previous configuration")
        self.runtime.notifier.ready(self.ready_status())

    async def stop(self) -> None:
        self.runtime.notifier.stopping()
        log.info("stopping: deregistering and draining (up to %gs)", self.settings.drain_timeout)
        cleanups: list[tuple[str, Callable[[], Awaitable[None]]]] = [  # last phase first
            ("deregistering", self.registry.stop),
            ("draining", self.drain),
            ("the service's stop()", self.service.stop),
            ("cancelling background tasks", self.cancel_tasks),
            ("closing the HTTP client", self.runtime.close),
        ]
        for what, cleanup in cleanups:
            try:
                await cleanup()
            except Exception:
                log.exception("stop: %s failed; going on with the other cleanups", what)
        log.info("stopped")
        if self.access is not None:
            self.access.close()

    async def drain(self) -> None:
        # Stop accepting first, then give connections accepted just before a moment to deliver
        # their request: aiohttp closes a connection with no request yet as idle, which a client
        # of a socket-activated restart (systemd keeps the socket) would see as a lost request.
        for runner in self.runners:
            for site in list(runner.sites):
                await site.stop()
        if any(runner.server and runner.server.connections for runner in self.runners):
            await asyncio.sleep(ACCEPT_GRACE)
        for runner in self.runners:  # then wait for in-flight requests (bounded by the drain timeout)
            await runner.cleanup()

    async def cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- driver ------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.should_exit.set)
        loop.add_signal_handler(signal.SIGINT, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)

    async def run(self) -> None:
        self.install_signal_handlers()
        self.check_limits()
        interval = systemd.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(systemd.watchdog_loop(self.runtime.notifier, interval)))
        await self.bind()
        try:
            await self.start()
            await self.wait_ready()
            await self.register()
            await self.serve()
        finally:
            await self.stop()


def run_service(service_cls: type[Service], settings: ServiceSettings, shared: SharedSettings,
                access: AccessLog | None = None) -> None:
    """Run a service until SIGTERM/SIGINT, in this process (what `nexusd run` does)."""
    server = Server(service_cls, settings, shared, access)
    try:
        import uvloop
    except ImportError:  # uvloop is a core dependency, but stay usable without it
        asyncio.run(server.run())
    else:
        uvloop.run(server.run())


def main(service_cls: type[Service]) -> int:
    """What `nexusd run <service>` does: settings from the environment (exit 78 naming the bad
    variable before anything is bound), logging, the access log, then `run_service`."""
    from nexusd.runtime.access import open_access_log
    from nexusd.runtime.logs import journal_address, resolve_format, setup_logging

    try:
        shared = load_settings(SharedSettings)
        settings = load_settings(service_cls.Settings)
        fmt = resolve_format(shared.log_format)
        setup_logging(service_cls.name, fmt, shared.log_level)
        run_service(service_cls, settings, shared, open_access_log(service_cls.name, fmt, journal_address()))
    except ConfigError as exc:
        print(f"nexusd {service_cls.name}: invalid configuration: {exc}", file=sys.stderr)
        return EX_CONFIG
    return 0
