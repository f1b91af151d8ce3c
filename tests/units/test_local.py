"""Reading the installed units as systemd does (nexusd/units/local.py): which nexusd services are
enabled here and where they listen, drop-ins and env files included."""

from __future__ import annotations

from pathlib import Path

from nexusd.services import service_names
from nexusd.units.install import install
from nexusd.units.local import listen_url, parse_unit, scan, values


def test_listen_url():
    assert listen_url("7860") == "http://127.0.0.1:7860"
    assert listen_url("0.0.0.0:7860") == "http://127.0.0.1:7860"
    assert listen_url("10.0.0.5:7860") == "http://10.0.0.5:7860"
    assert listen_url("[::1]:7860") == "http://[::1]:7860"
    assert listen_url("[::]:7860") == "http://[::1]:7860"
    assert listen_url("/run/nexus.sock") is None


def test_list_settings_reset_and_continuation_lines():
    items = parse_unit("[Socket]\nListenStream=1\n# c\nListenStream=\nListenStream=2 \\\n  3\n[X]\nListenStream=9\n")
    assert values(items, "Socket", "ListenStream") == ["2 3"]


def test_scan_follows_dropins_links_and_env_files(tmp_path: Path):
    install(tmp_path, "/opt/nexusd/bin/nexusd", etcd=True)
    units = tmp_path / "etc/systemd/system"
    config = tmp_path / "etc/nexus"
    (units / "nexus-images.socket.d").mkdir()
    (units / "nexus-images.socket.d/10-port.conf").write_text("[Socket]\nListenStream=\nListenStream=127.0.0.1:17860\n")
    (units / "nexus-images.socket.d/20-more.conf").write_text("[Socket]\nListenStream=127.0.0.1:17861\n")
    (units / "nexus.target.wants").mkdir()
    (units / "nexus.target.wants/nexus-images.service").symlink_to(units / "nexus-images.service")
    (units / "sockets.target.wants").mkdir()
    (units / "sockets.target.wants/nexus-gateway-obs.socket").symlink_to(units / "nexus-gateway-obs.socket")
    # A unit without a socket (an admin removed it): its env file has the address.
    (units / "nexus-tts.service").write_text((units / "nexus-tts.service").read_text().replace("Also=", "#Also="))
    (config / "tts.env").write_text("NEXUS_TTS_HOST=127.0.0.2\nNEXUS_TTS_PORT=19940\n")
    (units / "nexus-mine.service").write_text("[Service]\nExecStart=/usr/bin/mine run x\n")  # not ours

    found = {s.name: s for s in scan(str(units), str(config))}
    assert set(found) == set(service_names())  # every service; no etcd, no admin unit
    assert found["images"].enabled and found["images"].url == "http://127.0.0.1:17860"
    assert found["gateway"].enabled and found["gateway"].urls == {
        "api": "http://127.0.0.1:8800", "obs": "http://127.0.0.1:8801"}
    assert not found["ollama"].enabled and found["ollama"].url == "http://127.0.0.1:11434"
    assert found["tts"].url == "http://127.0.0.2:19940"
    (config / "tts.env").write_text("# nothing\n")
    tts = next(s for s in scan(str(units), str(config)) if s.name == "tts")
    assert tts.url is None and tts.problem == f"no socket unit and no NEXUS_TTS_PORT in {config / 'tts.env'}"


def test_scan_finds_enabled_instances_with_their_ports(tmp_path: Path):
    install(tmp_path, "/opt/nexusd/bin/nexusd", etcd=False, instances={"template": [1, 2, 3]},
            port_bases={"template": 21000})
    units = tmp_path / "etc/systemd/system"
    (units / "nexus.target.wants").mkdir()
    (units / "nexus.target.wants/nexus-template@1.service").symlink_to(units / "nexus-template@.service")
    (units / "sockets.target.wants").mkdir()  # instance 2 enabled through its socket only
    (units / "sockets.target.wants/nexus-template@2.socket").symlink_to(units / "nexus-template@.socket")
    # an admin's drop-in of instance 2 moves it (sorts after instance.conf)
    (units / "nexus-template@2.socket.d/zz-port.conf").write_text("[Socket]\nListenStream=\nListenStream=127.0.0.1:21999\n")
    found = {s.name: s for s in scan(str(units), str(tmp_path / "etc/nexus"))}
    assert found["template@1"].enabled and found["template@1"].urls == {"api": "http://127.0.0.1:21001"}
    assert found["template@2"].enabled and found["template@2"].url == "http://127.0.0.1:21999"
    assert "template@3" not in found  # not enabled: not an instance systemd would run
    assert found["template"].url == "http://127.0.0.1:9000" and not found["template"].enabled
    assert not any(name.endswith("@") for name in found)  # the template files are no entries
