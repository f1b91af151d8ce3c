"""The unit files the ollama service adds: Ollama's own unit moved behind us, ours ordered after it."""

from __future__ import annotations

from nexusd.services.ollama.units import ollama_host
from nexusd.units.render import render_all


def test_drop_ins_move_the_daemon_and_order_our_unit():
    files = render_all(services=["ollama"])
    daemon = files["ollama.service.d/nexus.conf"]
    assert "Environment=OLLAMA_HOST=127.0.0.1:11436" in daemon  # NEXUS_OLLAMA_UPSTREAM's default
    # The service's declared resources limit the daemon, which holds the models.
    assert "CPUQuota=800%" in daemon and "MemoryMax=32G" in daemon
    wrapper = files["nexus-ollama.service.d/ollama.conf"]
    assert "Wants=ollama.service" in wrapper and "After=ollama.service" in wrapper
    assert "ListenStream=127.0.0.1:11434" in files["nexus-ollama.socket"]


def test_ollama_host_takes_host_and_port():
    assert ollama_host("http://127.0.0.1:11436") == "127.0.0.1:11436"
    assert ollama_host("http://[::1]:9") == "[::1]:9"
    assert ollama_host("https://gpu-box") == "gpu-box:443"
