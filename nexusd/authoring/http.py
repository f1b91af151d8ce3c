"""The few HTTP exchanges `nexusd check` needs, on the standard library: plain requests, and raw
ones that send a body in pieces (a body over the limit; a request held in flight over SIGTERM)."""

from __future__ import annotations

import http.client
import io
import json
import select
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: Message  # case-insensitive .get()
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def snippet(self, limit: int = 200) -> str:
        ctype = self.headers.get("Content-Type", "none")
        text = self.body[:limit].decode(errors="replace").replace("\n", " ")
        return f"{self.status} {ctype}: {text!r}"


def _address(base: str) -> tuple[str, str, int]:
    url = urlsplit(base)
    return url.scheme, url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> Answer:
    scheme, host, port = _address(base)
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.msg, resp.read())
    finally:
        conn.close()


class _Recorded:
    """Lets http.client parse a response that was read off a raw socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self.data)


def parse_response(raw: bytes, complete: bool = True) -> Answer | None:
    """The HTTP/1.1 response in raw. complete=True: the connection has closed, so this is all
    (ValueError if it is not a whole response). complete=False: None until a whole response with
    a known length (Content-Length or chunked) is there."""
    if not raw:
        if complete:
            raise ValueError("connection closed with no response")
        return None
    resp = http.client.HTTPResponse(_Recorded(raw))  # type: ignore[arg-type]
    try:
        resp.begin()
        if not complete and resp.length is None and not resp.chunked:
            return None  # delimited by the close: wait for it
        body = resp.read()
    except (http.client.HTTPException, OSError) as exc:
        if not complete:
            return None
        raise ValueError(f"incomplete response ({type(exc).__name__}: {raw[:120]!r})") from None
    return Answer(resp.status, resp.msg, body)


class RawExchange:
    """One request on its own connection (`Connection: close`), its body sent in pieces."""

    def __init__(self, base: str, method: str, path: str, headers: dict[str, str], length: int,
                 timeout: float = 30) -> None:
        scheme, host, port = _address(base)
        sock = socket.create_connection((host, port), timeout=timeout)
        if scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {length}",
                 "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def answered(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def send(self, pieces: Iterable[bytes]) -> None:
        """Send pieces until done or until the server has answered (it may refuse early)."""
        try:
            for piece in pieces:
                if self.answered():
                    return
                self.sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return  # it answered and closed: read the answer

    def response(self) -> Answer:
        """The answer, once whole: a server that refused the body early may keep the connection
        open waiting for the rest, so do not wait for the close when the length is known."""
        raw = b""
        try:
            while chunk := self.sock.recv(65536):
                raw += chunk
                if (answer := parse_response(raw, complete=False)) is not None:
                    return answer
        except ConnectionResetError:
            pass
        finally:
            self.sock.close()
        answer = parse_response(raw)
        assert answer is not None
        return answer
