"""The local etcd and /etc/nexus/common.env: what `nexusd units install` renders with and without
it, how common.env's NEXUS_ETCD_ENDPOINTS decides, and what uninstall takes back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from nexusd.units.etcd import LOCAL_ENDPOINT, common_env, endpoints_in, is_local, set_local_endpoint
from nexusd.units.install import install, uninstall

UNITS = "etc/systemd/system"


def nexusd(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NEXUS_ETCD_ENDPOINTS"}  # e.g. a quickstart shell's
    return subprocess.run([sys.executable, "-m", "nexusd.cli", *args], capture_output=True, text=True,
                          check=True, env=env).stdout


def test_endpoints_line():
    assert endpoints_in(common_env(LOCAL_ENDPOINT)) == [LOCAL_ENDPOINT]
    assert endpoints_in(common_env(None)) is None  # commented out
    assert endpoints_in("NEXUS_ETCD_ENDPOINTS='https://a:2379, https://b:2379'\n") == ["https://a:2379", "https://b:2379"]
    assert is_local(["http://127.0.0.1:2379"]) and is_local(["http://localhost:12379"])
    assert not is_local(["https://127.0.0.1:2379"]) and not is_local(["http://etcd1:2379"])
    assert not is_local(["http://127.0.0.1:2379", "http://127.0.0.1:2479"])
    # following --no-etcd and back keeps everything else
    text = "NEXUS_INTERNAL_TOKEN=s\n" + common_env("http://127.0.0.1:3000")
    off = set_local_endpoint(text, None)
    assert endpoints_in(off) is None and "#NEXUS_ETCD_ENDPOINTS=http://127.0.0.1:3000" in off
    assert set_local_endpoint(off, "http://127.0.0.1:3000") == text
    assert endpoints_in(set_local_endpoint("X=1\n", LOCAL_ENDPOINT)) == [LOCAL_ENDPOINT]


def test_install_with_then_without_etcd(tmp_path: Path):
    out = nexusd("units", "install", "--root", str(tmp_path), "--nexusd", "/opt/n/bin/nexusd")
    units = tmp_path / UNITS
    etcd = (units / "nexus-etcd.service").read_text()
    assert re.search(r"^ExecStart=/\S+/etcd --name nexus --data-dir %S/nexus/etcd ", etcd, re.M)
    assert "Type=notify" in etcd and "StateDirectory=nexus/etcd" in etcd and "DynamicUser=yes" in etcd
    images = (units / "nexus-images.service").read_text()
    assert "Wants=network-online.target nexus-etcd.service nexus-images.socket\n" in images
    assert images.index("EnvironmentFile=-/etc/nexus/common.env") < images.index("EnvironmentFile=-/etc/nexus/images.env")
    common = tmp_path / "etc/nexus/common.env"
    assert endpoints_in(common.read_text()) == [LOCAL_ENDPOINT] and common.stat().st_mode & 0o777 == 0o600
    assert f"wrote   {common}" in out

    out = nexusd("units", "install", "--root", str(tmp_path), "--no-etcd")
    assert not (units / "nexus-etcd.service").exists() and f"removed {units / 'nexus-etcd.service'}" in out
    assert "nexus-etcd" not in (units / "nexus-images.service").read_text()
    assert "EnvironmentFile=-/etc/nexus/common.env" in (units / "nexus-images.service").read_text()
    assert endpoints_in(common.read_text()) is None and "note    no local etcd (--no-etcd)" in out


def test_a_cluster_in_common_env_leaves_the_local_etcd_out(tmp_path: Path):
    common = tmp_path / "etc/nexus/common.env"
    common.parent.mkdir(parents=True)
    common.write_text("NEXUS_ETCD_ENDPOINTS=https://etcd1:2379,https://etcd2:2379\n")
    report = install(tmp_path, "/usr/bin/nexusd")
    assert not (tmp_path / UNITS / "nexus-etcd.service").exists()
    assert "nexus-etcd" not in (tmp_path / UNITS / "nexus-tts.service").read_text()
    assert common.read_text() == "NEXUS_ETCD_ENDPOINTS=https://etcd1:2379,https://etcd2:2379\n"
    assert any("points NEXUS_ETCD_ENDPOINTS at https://etcd1:2379" in n for n in report.notes)


def test_uninstall_takes_back_untouched_env_files_and_keeps_edited_ones(tmp_path: Path):
    install(tmp_path, "/usr/bin/nexusd")
    config = tmp_path / "etc/nexus"
    (config / "tts.env").write_text((config / "tts.env").read_text() + "NEXUS_TTS_BACKEND=piper\n")
    report = uninstall(tmp_path)
    assert sorted(p.name for p in config.iterdir()) == ["tts.env"]
    assert config / "common.env" in report.removed and config / "tts.env" in report.kept
    assert not any((tmp_path / UNITS).rglob("*.service"))


def test_endpoints_from_a_service_env_file_or_the_environment_count_too(tmp_path: Path):
    # An older install configured etcd per service: that cluster is this host's etcd.
    (tmp_path / "a/etc/nexus").mkdir(parents=True)
    (tmp_path / "a/etc/nexus/images.env").write_text("NEXUS_ETCD_ENDPOINTS=https://etcd1:2379\n")
    out = nexusd("units", "install", "--root", str(tmp_path / "a"))
    assert not (tmp_path / f"a/{UNITS}/nexus-etcd.service").exists()
    assert "images.env points NEXUS_ETCD_ENDPOINTS at https://etcd1:2379" in out
    assert endpoints_in((tmp_path / "a/etc/nexus/common.env").read_text()) == ["https://etcd1:2379"]
    # Provisioning another host in one line: the endpoints in install's environment.
    env = {**os.environ, "NEXUS_ETCD_ENDPOINTS": "https://etcd1:2379,https://etcd2:2379"}
    out = subprocess.run([sys.executable, "-m", "nexusd.cli", "units", "install", "--root", str(tmp_path / "b")],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert "note    no local etcd: the environment points NEXUS_ETCD_ENDPOINTS at https://etcd1:2379,https://etcd2:2379" in out
    assert endpoints_in((tmp_path / "b/etc/nexus/common.env").read_text()) == ["https://etcd1:2379", "https://etcd2:2379"]
    assert not (tmp_path / f"b/{UNITS}/nexus-etcd.service").exists()
