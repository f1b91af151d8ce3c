"""The fast access-record sinks write the same fields as the logging path, escaped correctly."""

from __future__ import annotations

import io
import json
import socket

from nexusd.runtime.access import journal_sink, json_sink, text_sink


def test_json_sink_plain_and_escaped_paths():
    out = io.StringIO()
    sink = json_sink("template", out)
    sink("GET", "/v1/echo", 200, 1.25, "abc-1")
    sink("GET", '/we"ird\\path', 404, 0.5, 'id"q')
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {**first, "service": "template", "logger": "nexusd.access", "request_id": "abc-1",
                     "method": "GET", "path": "/v1/echo", "status": 200, "duration_ms": 1.25}
    assert first["msg"] == "GET /v1/echo 200 1.2ms" or first["msg"] == "GET /v1/echo 200 1.3ms"
    assert second["path"] == '/we"ird\\path' and second["request_id"] == 'id"q'


def test_text_sink_names_the_request():
    out = io.StringIO()
    text_sink("tts", out)("POST", "/v1/audio/speech", 400, 3.0, "rid-9")
    assert "POST /v1/audio/speech 400 3.0ms [rid-9]" in out.getvalue()


def test_journal_sink_sends_native_fields(tmp_path):
    path = str(tmp_path / "journal.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    try:
        journal_sink("images", path)("GET", "/health", 200, 0.1, "r-1")
        fields = dict(line.split("=", 1) for line in server.recv(65536).decode().splitlines())
    finally:
        server.close()
    assert fields["REQUEST_ID"] == "r-1" and fields["STATUS"] == "200" and fields["PRIORITY"] == "6"
    assert fields["NEXUS_SERVICE"] == "images" and fields["PATH"] == "/health" and "DURATION_MS" in fields
