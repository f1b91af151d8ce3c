"""`nexusd new demo-svc`: the package installs with `pip install -e` into a fresh environment and,
with no other step, is listed, passes `nexusd check`, passes its own generated tests, renders into
units, and is routed to by a real gateway from a static `<NAME>_BASE_URL` backend."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from nexusd.authoring.new import NewServiceError, placeholders, render_package
from tests.helpers.net import free_port, wait_for
from tests.helpers.proc import run_service, terminate


def test_generated_files():
    files = render_package("demo-svc", port=9123)
    assert set(files) == {"pyproject.toml", "README.md", "demo_svc/__init__.py", "tests/test_demo_svc.py"}
    assert '[project.entry-points."nexusd.services"]\ndemo-svc = "demo_svc:DemoSvcService"' in files["pyproject.toml"]
    assert "{{" not in "".join(files.values())
    module = files["demo_svc/__init__.py"]
    assert "Field(9123" in module and 'service_config("demo-svc")' in module
    assert len(module.splitlines()) <= 80  # the template's one service shape stays small


@pytest.mark.parametrize("bad", ["Demo", "demo_svc", "-demo", "demo--svc", "9lives", "demo-", ""])
def test_names_that_cannot_be_units_or_variables_are_refused(bad):
    with pytest.raises(NewServiceError):
        placeholders(bad)


def test_refuses_an_existing_service_and_a_non_empty_directory(venv, tmp_path):
    proc = venv.nexusd("new", "template", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "already a service" in proc.stderr
    (tmp_path / "fresh" / "notes").parent.mkdir()
    (tmp_path / "fresh" / "notes").write_text("mine")
    proc = venv.nexusd("new", "fresh", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (tmp_path / "fresh" / "notes").read_text() == "mine"


def test_listed_and_described_once_installed(venv, demo):
    out = venv.nexusd("list").stdout
    assert re.search(r"^demo-svc\s+Echoes a validated message$", out, re.M), out


def test_version_comes_from_the_plugin_distribution(venv, demo):
    # Defect: a plugin's service.version was nexusd's own (0.1.0), not its package's.
    proc = venv.nexusd("metadata", "demo-svc")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["service"]["version"] == "2.5.0"


def test_nexusd_check_passes_as_generated(venv, demo):
    proc = venv.nexusd("check", "demo-svc", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    for name in ("readyz", "metadata", "metrics", "X-Request-ID", "READY=1", "SIGTERM drain",
                 "POST /v1/demo-svc/echo: bad JSON", "POST /v1/demo-svc/echo: too large"):
        assert re.search(rf"^  PASS\s+{re.escape(name)}\s", table, re.M), table
    assert not re.search(r"^  FAIL", table, re.M)
    assert "demo-svc 2.5.0" in table and "version=2.5.0" in table


def test_generated_tests_pass(venv, demo):
    # The contract suite, run from the service's own package (tests/test_contract.py could not).
    proc = venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(demo / "tests"), cwd=demo, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout


def test_unit_renders_with_the_other_services(venv, demo):
    proc = venv.nexusd("units", "render")
    assert proc.returncode == 0, proc.stderr
    unit = proc.stdout.split("### nexus-demo-svc.service\n")[1].split("### ")[0]
    assert "ExecStart=/usr/bin/nexusd run demo-svc" in unit
    assert "# NEXUS_DEMO_SVC_START_TIMEOUT=90s" in unit and "MemoryMax=256M" in unit
    assert "### nexus-demo-svc.socket" in proc.stdout
    assert re.search(r"^# Installed here: .*nexus-demo-svc\.service", proc.stdout, re.M)


def test_instance_units_name_the_port_variable_the_settings_read(venv, demo):
    """`demo-svc` reads NEXUS_DEMO_SVC_PORT: a hyphen is no variable-name character."""
    proc = venv.nexusd("units", "render", "--instances", "demo-svc=0-1")
    assert proc.returncode == 0, proc.stderr
    dropin = proc.stdout.split("### nexus-demo-svc@1.service.d/instance.conf\n")[1].split("### ")[0]
    assert re.search(r"^Environment=NEXUS_DEMO_SVC_PORT=\d+$", dropin, re.M), dropin
    assert "NEXUS_DEMO-SVC" not in proc.stdout


def test_gateway_routes_to_it_from_a_static_base_url(venv, demo, tmp_path):
    from nexusd.services.gateway.keys import new_key, write_keys

    port = free_port()
    service = venv.run_background("-m", "nexusd.cli", "run", "demo-svc", log=tmp_path / "demo.log",
                                  NEXUS_DEMO_SVC_PORT=str(port))
    try:
        key, record = new_key("author")
        write_keys(tmp_path / "keys", [record])
        env = {"DEMO_SVC_BASE_URL": f"http://127.0.0.1:{port}", "NEXUS_GATEWAY_KEYS_FILE": str(tmp_path / "keys"),
               "NEXUS_GATEWAY_OBS_PORT": str(free_port()), "NEXUS_GATEWAY_POLL_INTERVAL": "0.2"}
        with run_service("gateway", tmp_path, env=env, wait_ready=False) as gateway:
            body = json.dumps({"message": "via the gateway"}).encode()

            def echo():
                req = urllib.request.Request(gateway.url + "/v1/demo-svc/echo", data=body, method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {key}"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, resp.headers, json.loads(resp.read())

            status, headers, answer = wait_for(echo, timeout=60, interval=0.2, what="a routed echo")
        assert status == 200 and answer["message"] == "demo-svc: via the gateway"
        assert headers["X-Nexus-Instance"].startswith("demo-svc-")
    finally:
        terminate(service)
