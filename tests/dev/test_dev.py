"""`nexusd dev` end to end: the whole stack on free ports, the official openai client through
the gateway (chat, embeddings, images, speech), then SIGINT leaves no process behind."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from openai import OpenAI, OpenAIError

from tests.helpers.net import wait_for

pytestmark = pytest.mark.timeout(600)


class DevStack:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "OPENAI_"))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nexusd.cli", "dev", "--free-ports"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.lines: list[str] = []
        self.restarted: dict[str, int] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def exported(self, name: str) -> str:
        m = re.search(rf"^export {name}=(\S+)$", self.output(), re.M)
        return m.group(1) if m else ""

    def pids(self) -> dict[str, int]:
        found = {m.group(1): int(m.group(2))
                 for m in re.finditer(r"nexusd dev: (\w+) ready \(pid (\d+)\)", self.output())}
        return {**found, **self.restarted}

    def children(self) -> set[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return {int(p) for p in f.read().split()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def stack():
    dev = DevStack()
    try:
        wait_for(lambda: dev.exported("OPENAI_API_KEY") or dev.proc.poll() is not None,
                 timeout=300, what="nexusd dev to print the key")
        assert dev.proc.poll() is None, dev.output()[-4000:]
        yield dev
    finally:
        if dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGINT)
            try:
                dev.proc.wait(60)
            except subprocess.TimeoutExpired:
                dev.proc.kill()


def test_every_service_ready_and_key_printed(stack):
    pids = stack.pids()
    for name in ("ollama", "images", "tts", "stt", "gateway"):
        assert name in pids, stack.output()[-3000:]
    assert stack.exported("OPENAI_BASE_URL").endswith("/v1")
    assert stack.exported("OPENAI_API_KEY").startswith("nx-")


def test_openai_client_through_the_gateway(stack):
    client = OpenAI(base_url=stack.exported("OPENAI_BASE_URL"), api_key=stack.exported("OPENAI_API_KEY"),
                    max_retries=0, timeout=120)
    models = {m.id: m.owned_by for m in client.models.list().data}
    llm = next(m for m, owner in models.items() if owner == "ollama")
    chat = client.chat.completions.create(model=llm, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
    assert chat.choices[0].message.content
    emb = client.embeddings.create(model=llm, input=["one sentence", "another"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 8
    image = client.images.generate(prompt="a red square", size="256x256", response_format="b64_json")
    png = base64.b64decode(image.data[0].b64_json)
    assert png.startswith(b"\x89PNG")
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.", response_format="wav")
    import av

    with av.open(io.BytesIO(speech.content)) as container:
        assert container.streams.audio[0].duration or container.duration


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_status_page_in_headless_chromium(stack, tmp_path):
    m = re.search(r"status page: (http://\S+)", stack.output())
    assert m, stack.output()[-2000:]
    url = m.group(1)
    # The gateway discovers instances asynchronously: wait until the page lists all of them ready.
    wait_for(lambda: urllib.request.urlopen(url, timeout=5).read().decode().count(">ready<") >= 3,
             timeout=60, what="status page with ready instances")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chromium'}"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for service in ("ollama", "images", "tts"):
        assert f"<b>{service}</b>" in dom, dom[:2000]
    assert "Routes" in dom and "Recent errors" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    subprocess.run(["chromium", *flags, "--window-size=1400,900", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_status_cli_reads_the_gateway(stack):
    obs = re.search(r"status page: (http://\S+?)/?$", stack.output(), re.M).group(1)
    wait_for(lambda: subprocess.run([sys.executable, "-m", "nexusd.cli", "status", "--gateway", obs],
                                    capture_output=True, timeout=30).returncode == 0,
             timeout=60, what="every instance ready in nexusd status")
    out = subprocess.run([sys.executable, "-m", "nexusd.cli", "status", "--gateway", obs, "--json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    services = json.loads(out)["services"]
    assert {"ollama", "images", "tts"} <= set(services)
    images = services["images"][0]
    assert images["state"] == "ready" and images["models"] and images["resources"]["memory"]
    assert "status" in images["limits"]  # unenforced outside systemd, matching under it



def test_demo_writes_the_image_and_the_audio(stack, tmp_path):
    env = {**os.environ, "OPENAI_BASE_URL": stack.exported("OPENAI_BASE_URL"),
           "OPENAI_API_KEY": stack.exported("OPENAI_API_KEY")}
    out = subprocess.run([sys.executable, "-m", "nexusd.cli", "demo", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    png, mp3 = tmp_path.resolve() / "nexus-demo.png", tmp_path.resolve() / "nexus-demo.mp3"
    assert re.search(r"^chat \(.+\): ['\"].+['\"]$", out.stdout, re.M), out.stdout
    assert f"image: {png}" in out.stdout and f"speech: {mp3}" in out.stdout  # printed where
    assert re.search(r"^transcription: ['\"].*['\"]$", out.stdout, re.M), out.stdout  # the speech, heard back
    assert png.read_bytes().startswith(b"\x89PNG")
    import av

    with av.open(str(mp3)) as container:
        assert container.format.name == "mp3"
        assert sum(1 for _ in container.decode(audio=0)) > 0



def test_a_dead_child_is_restarted_on_its_socket(stack):
    old = stack.pids()["tts"]
    others = stack.children() - {old}
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: "tts exited with -9; restarting" in stack.output(), timeout=30, what="restart notice")
    new = wait_for(lambda: stack.children() - others - {old}, timeout=30, what="a new tts process")
    stack.restarted["tts"] = new.pop()
    client = OpenAI(base_url=stack.exported("OPENAI_BASE_URL"), api_key=stack.exported("OPENAI_API_KEY"),
                    max_retries=0, timeout=60)

    def speaks() -> bool:
        try:
            return client.audio.speech.create(model="tts-1", voice="alloy", input="Back.",
                                               response_format="wav").content[:4] == b"RIFF"
        except OpenAIError:  # not ready yet: the gateway answers 503 until its /readyz passes
            return False

    wait_for(speaks, timeout=60, what="speech through the restarted tts")

def test_sigint_stops_everything(stack):
    pids = stack.pids()
    assert pids and all(alive(p) for p in pids.values())
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(90) == 0
    wait_for(lambda: not any(alive(p) for p in pids.values()), timeout=30, what="children gone")
    # reverse order: the gateway stops before the services it routes to, etcd last
    out = stack.output()
    stops = [m.group(1) for m in re.finditer(r"(\w+) \|\S* .*nexusd.server: stopping", out)]
    assert stops[0] == "gateway" and set(stops) >= {"gateway", "ollama", "images", "tts"}, stops
