"""The multipart relay: OpenAI's audio uploads (/v1/audio/transcriptions, /translations).

The body is spooled as it arrives (in memory up to 1 MiB, then an anonymous temporary file that
is unlinked from the start, so nothing is left behind, and closed after), bounded by `max_upload` (413 above it;
the JSON routes keep their 4 MiB bound). Routing needs the `model` field, which a client may
send after the file (the openai client does): the spooled body is scanned for the part
boundaries and only the small text parts are read; the file's bytes are never parsed. The body
goes upstream unchanged, from the spool, so the one retry on a connect failure sends it again.
Keys, scopes, metrics and usage are the relay's own (proxy.Proxy.forward).
"""

from __future__ import annotations

import io
import re
import tempfile
from typing import IO, TYPE_CHECKING

from aiohttp import web

from nexusd.runtime.errors import ApiError
from nexusd.services.gateway.auth import API_KEY
from nexusd.services.gateway.proxy import check_scope, mime

if TYPE_CHECKING:
    from nexusd.services.gateway.proxy import Proxy

SPOOL_IN_MEMORY = 1 << 20
SCAN_CHUNK = 1 << 20
FIELD_LIMIT = 4096  # the routing fields are short; a longer value is not a model name
_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)


class SpooledBody:
    """The request body, replayable: `payload()` rewinds it for each upstream attempt. Bytes in
    memory up to 1 MiB, then a `TemporaryFile` (a real file object, so aiohttp sends it with
    its size as Content-Length, reading it in a thread)."""

    def __init__(self) -> None:
        self.memory = bytearray()
        self.disk: IO[bytes] | None = None
        self.size = 0

    async def fill(self, request: web.Request, limit: int) -> None:
        while chunk := await request.content.readany():
            self.size += len(chunk)
            if self.size > limit:
                raise ApiError(413, f"Request body larger than {limit} bytes", code="request_too_large")
            if self.disk is not None:
                self.disk.write(chunk)
            elif len(self.memory) + len(chunk) > SPOOL_IN_MEMORY:
                self.disk = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
                self.disk.write(self.memory)
                self.disk.write(chunk)
                self.memory = bytearray()
            else:
                self.memory += chunk

    @property
    def file(self) -> IO[bytes]:
        return self.disk if self.disk is not None else io.BytesIO(self.memory)

    def payload(self) -> IO[bytes] | bytes:
        if self.disk is None:
            return bytes(self.memory)
        self.disk.seek(0)
        return self.disk

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()


def boundary_of(content_type: str) -> bytes:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None or not 1 <= len(match.group(1)) <= 70:  # RFC 2046's limit
        raise ApiError(400, "multipart/form-data without a valid boundary", code="invalid_multipart")
    return match.group(1).encode("latin-1", "replace")


def scan_fields(body: IO[bytes], boundary: bytes, wanted: frozenset[str]) -> dict[str, str]:
    """The values of the `wanted` text fields, wherever they sit in the form. Reads the spool
    in 1 MiB pieces and looks only for delimiters (`CRLF--boundary`), which the content of a
    part cannot hold (RFC 2046 5.1.1), so a file cannot pose as a field. The bytes of other
    parts are dropped as soon as they are searched."""
    delimiter = b"\r\n--" + boundary
    tail = len(delimiter) - 1  # what a delimiter split across two reads can leave behind
    body.seek(0)
    buf = b"\r\n"  # a leading CRLF makes the first delimiter look like the others
    found: dict[str, str] = {}

    def read() -> bool:
        nonlocal buf
        chunk = body.read(SCAN_CHUNK)
        buf += chunk
        return bool(chunk)

    while (at := buf.find(delimiter)) < 0:  # skip the preamble
        buf = buf[-tail:]
        if not read():
            raise _malformed("no boundary")
    buf = buf[at:]
    while True:  # buf starts with a delimiter
        start = len(delimiter)
        while len(buf) < start + 2 and read():
            pass
        if buf[start:start + 2] == b"--":  # the closing delimiter
            return found
        while (head_end := buf.find(b"\r\n\r\n", start)) < 0:
            if len(buf) > start + 16 * 1024 or not read():
                raise _malformed("part headers do not end")
        name = _part_name(buf[start:head_end])
        content = pos = head_end + 4
        while (nxt := buf.find(delimiter, pos)) < 0:
            if name in wanted:
                if len(buf) - content > FIELD_LIMIT:
                    raise ApiError(400, f"{name}: longer than {FIELD_LIMIT} bytes", param=name,
                                   code="invalid_value")
                pos = max(content, len(buf) - tail)
            else:  # a file: keep only what could begin a delimiter
                buf = buf[-tail:] if len(buf) > tail else buf
                content = pos = 0
            if not read():
                raise _malformed("no closing boundary")
        if name in wanted:
            if name in found:
                raise ApiError(400, f"{name}: given more than once", param=name, code="invalid_value")
            if nxt - content > FIELD_LIMIT:
                raise ApiError(400, f"{name}: longer than {FIELD_LIMIT} bytes", param=name, code="invalid_value")
            found[name] = buf[content:nxt].decode("utf-8", "replace")
        buf = buf[nxt:]


def _malformed(why: str) -> ApiError:
    return ApiError(400, f"Malformed multipart body: {why}", code="invalid_multipart")


def _part_name(headers: bytes) -> str:
    for line in headers.split(b"\r\n"):
        if line.lower().startswith(b"content-disposition:"):
            match = _NAME.search(line)
            if match:
                return match.group(1).decode("utf-8", "replace")
    return ""


class MultipartRelay:
    ROUTING_FIELDS = frozenset({"model", "stream"})

    def __init__(self, proxy: Proxy, max_upload: int) -> None:
        self.proxy = proxy
        self.max_upload = max_upload

    async def handle(self, request: web.Request) -> web.StreamResponse:
        proxy = self.proxy
        route = proxy.table.route(request.method, request.path)
        ctype = mime(request)
        if ctype != "multipart/form-data":
            raise ApiError(415, f"Content-Type must be multipart/form-data, got {ctype or 'none'}",
                           code="unsupported_media_type")
        boundary = boundary_of(request.headers.get("Content-Type", ""))
        body = SpooledBody()
        try:
            await body.fill(request, self.max_upload)
            fields = scan_fields(body.file, boundary, self.ROUTING_FIELDS)
            model = fields.get("model") or None
            if model is not None and len(model) > 256:
                raise ApiError(400, "model must be at most 256 characters", param="model", code="invalid_value")
            instances, model_id = proxy.table.candidates(route, model)
            key = request[API_KEY]
            check_scope(key, route.operation_id, model_id, model)
            if fields.get("stream", "").strip().lower() == "true" and not route.streaming:
                raise ApiError(400, f"{route.operation_id} does not support stream=true", param="stream",
                               code="streaming_unsupported")
            return await proxy.forward(request, route, instances, body.payload, model_id, key)
        finally:
            body.close()
