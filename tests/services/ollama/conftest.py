"""Fixtures for the ollama service tests: the Ollama API double on its own thread (the service
under test runs as a subprocess and the helpers wait synchronously), and an sd_notify socket."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest

from tests.services.ollama.ollama_double import OllamaDouble


class DoubleThread:
    """Runs an OllamaDouble on an event loop in a thread; call() runs code on that loop."""

    def __init__(self, double: OllamaDouble) -> None:
        self.double = double
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = self.call(double.start())

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def gate(self) -> None:
        """Pause pulls at 50% until release()."""
        async def make() -> None:
            self.double.pull_gate = asyncio.Event()
        self.call(make())

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.double.pull_gate.set)

    def close(self) -> None:
        if self.double.pull_gate is not None:
            self.release()
        self.call(self.double.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def double():
    d = DoubleThread(OllamaDouble())
    yield d
    d.close()


class NotifySocket:
    """Collects sd_notify datagrams as systemd would."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[str] = []

    def messages(self) -> list[str]:
        while True:
            try:
                self.received.extend(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return self.received

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()
