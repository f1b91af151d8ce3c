"""Logging to stderr: JSON lines, plain text, or native journald records with fields.

The request id lives in a contextvar set by the runtime's per-request handling, so every record logged while a
request is handled carries it (`REQUEST_ID` in the journal: `journalctl REQUEST_ID=...`).
Nothing here logs headers or bodies; callers must not pass secrets in `extra`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import struct
import sys
import time
import traceback

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Fields a caller may attach with `extra={...}`; they become journal fields (upper case) and
# JSON keys. Anything else in `extra` is ignored, so nothing leaks by accident.
FIELDS = ("method", "path", "status", "duration_ms", "operation", "model", "instance", "remote")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode when stdout/stderr are connected to the journal."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.service = self.service
        return True


# One encoder for every record: json.dumps(default=...) builds a new JSONEncoder per call.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", None),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            doc["request_id"] = rid
        for f in FIELDS:
            v = getattr(record, f, None)
            if v is not None:
                doc[f] = v
        if record.exc_info:
            doc["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return _encode(doc)


def escape_controls(text: str) -> str:
    """Control characters as escapes, so a decoded path (`%0A`) cannot forge log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None)
        msg = escape_controls(record.getMessage())
        line = f"{time.strftime('%H:%M:%S')} {record.levelname[0]} {record.name}: {msg}"
        if rid:
            line += f" [{rid}]"
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info))
        return line


def journal_field(name: str, value: object) -> bytes:
    data = str(value).encode()
    key = name.encode()
    if b"\n" in data:  # binary-safe form: NAME\n<le64 length><data>\n
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


class JournalHandler(logging.Handler):
    """Sends native journal records (systemd.journal-fields(7)) over the journal's socket."""

    def __init__(self, service: str, address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.service = service
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + "".join(traceback.format_exception(*record.exc_info))
            parts = [
                journal_field("MESSAGE", msg),
                journal_field("PRIORITY", _PRIORITY.get(record.levelno, 6)),
                journal_field("SYSLOG_IDENTIFIER", f"nexus-{self.service}"),
                journal_field("NEXUS_SERVICE", self.service),
                journal_field("LOGGER", record.name),
                journal_field("CODE_FILE", record.pathname),
                journal_field("CODE_LINE", record.lineno),
                journal_field("CODE_FUNC", record.funcName),
            ]
            rid = getattr(record, "request_id", None)
            if rid:
                parts.append(journal_field("REQUEST_ID", rid))
            for f in FIELDS:
                v = getattr(record, f, None)
                if v is not None:
                    parts.append(journal_field(f.upper(), v))
            self.sock.sendto(b"".join(parts), self.address)
        except OSError:
            # The journal is gone or full; fall back to stderr rather than lose the record.
            sys.stderr.write(record.getMessage() + "\n")

    def close(self) -> None:
        self.sock.close()
        super().close()


def resolve_format(fmt: str) -> str:
    """NEXUS_LOG_FORMAT=auto: the journal's native records when stderr is the journal, else JSON."""
    if fmt == "auto":
        return "journal" if stderr_is_journal() else "json"
    return fmt


def journal_address() -> str:
    return os.environ.get("NEXUS_JOURNAL_SOCKET", JOURNAL_SOCKET)


def setup_logging(service: str, fmt: str = "auto", level: str = "info") -> logging.Handler:
    """The root logger for a service process. Its access records are not `logging` records:
    see access.open_access_log, which the caller passes to the server."""
    fmt = resolve_format(fmt)
    handler: logging.Handler
    if fmt == "journal":
        handler = JournalHandler(service, journal_address())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # the runtime writes its own access records
    return handler
