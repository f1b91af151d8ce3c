"""Bad configuration exits 78 (EX_CONFIG, no restart loop) with a one-line message naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nexusd.services.ollama.settings import OllamaSettings, parse_gguf
from tests.helpers.net import free_port
from tests.helpers.proc import REPO, service_env


def run(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nexusd.cli", "run", "ollama"], cwd=REPO, timeout=60,
                          env=service_env("ollama", free_port(), **env), capture_output=True, text=True)


@pytest.mark.parametrize(("env", "needle"), [
    ({"NEXUS_OLLAMA_UPSTREAM": "ftp://host"}, "NEXUS_OLLAMA_UPSTREAM"),
    ({"NEXUS_OLLAMA_ENGINE": "vllm"}, "NEXUS_OLLAMA_ENGINE"),
    ({"NEXUS_OLLAMA_ENGINE": "llamacpp", "NEXUS_OLLAMA_GGUF": "tiny=/nonexistent/tiny.gguf"},
     "NEXUS_OLLAMA_GGUF: tiny: no such file"),
])
def test_bad_settings_exit_78(env, needle):
    proc = run(**env)
    assert proc.returncode == 78, proc.stderr[-2000:]
    assert needle in proc.stderr


def test_gguf_list_parsing():
    assert parse_gguf("a=/m/a.gguf, /m/b-q4.gguf") == {"a": "/m/a.gguf", "b-q4": "/m/b-q4.gguf"}
    with pytest.raises(ValueError):
        parse_gguf("=/m/a.gguf")
    assert OllamaSettings(models="llama3.2, qwen2.5:7b").model_list == ["llama3.2", "qwen2.5:7b"]
