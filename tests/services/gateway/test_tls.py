"""Optional HTTPS on the API port: a self-signed certificate made with `openssl`, the `openai`
client verifying it; a certificate that cannot be loaded is a configuration error (exit 78)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys

import aiohttp
import openai
import pytest

from nexusd.runtime.settings import SharedSettings
from tests.helpers.proc import REPO, service_env
from tests.services.gateway.harness import make_keys, serve_gateway

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture
def cert(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return tmp_path / "cert.pem", tmp_path / "key.pem"


async def test_https_api_port(tmp_path, cert):
    key = make_keys(tmp_path / "keys", {"k": {}})["k"]
    async with serve_gateway(tmp_path / "keys", {}, shared=SharedSettings(etcd_endpoints="", internal_token=""),
                             tls_cert=str(cert[0]), tls_key=str(cert[1])) as gw:
        port = gw.bound["api"][1]
        verify = ssl.create_default_context(cafile=str(cert[0]))
        # the openai client's own HTTP stack (httpx or its successor), told to trust our CA
        async with openai.DefaultAsyncHttpxClient(verify=verify) as http:
            client = openai.AsyncOpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key=key,
                                        http_client=http, max_retries=0)
            assert (await client.models.list()).data == []
            with pytest.raises(openai.AuthenticationError):
                await openai.AsyncOpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key="nx-bad",
                                         http_client=http, max_retries=0).models.list()
        # plain HTTP on the TLS port gets nowhere
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{port}/health") as r:
                    await r.read()


def test_unloadable_certificate_exits_78(tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate")
    env = service_env("gateway", 0, NEXUS_GATEWAY_OBS_PORT="0", NEXUS_GATEWAY_KEYS_FILE=str(tmp_path / "k"),
                      NEXUS_GATEWAY_TLS_CERT=str(tmp_path / "bad.pem"), NEXUS_GATEWAY_TLS_KEY=str(tmp_path / "bad.pem"))
    out = subprocess.run([sys.executable, "-m", "nexusd.cli", "run", "gateway"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stderr[-2000:]
    assert "NEXUS_GATEWAY_TLS_CERT" in out.stderr
