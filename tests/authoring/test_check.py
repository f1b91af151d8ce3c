"""`nexusd check` fails, naming each problem, on a service that breaks the contract, and checks a
running service by URL. (That it passes on correct services: test_new.py and tests/test_contract.py.)"""

from __future__ import annotations

import re

import pytest

from nexusd.authoring.check import FAIL, SCHEMA_PATH, run_contract
from nexusd.runtime.metadata import json_schema
from tests.helpers.proc import REPO, run_service

# The generated module, broken twice as a new author might: no readiness check bound, and a
# handler that parses its own body and answers errors in plain text.
BREAKAGE = {
    '        return {"loaded": self.is_loaded}\n': "        return {}\n",
    "        body = await parse_json(request, EchoRequest)  # 415 / 400 / 413 as error envelopes\n": (
        "        import json\n"
        "        try:\n"
        "            body = EchoRequest(**json.loads(await request.text()))\n"
        "        except Exception as exc:\n"
        "            return web.Response(status=400, text=f'bad request: {exc}')\n"
    ),
}


@pytest.fixture(scope="module")
def broken(venv, tmp_path_factory):
    where = tmp_path_factory.mktemp("broken")
    assert venv.nexusd("new", "broken-svc", "--dir", str(where)).returncode == 0
    module = where / "broken-svc" / "broken_svc" / "__init__.py"
    text = module.read_text()
    for old, new in BREAKAGE.items():
        assert old in text
        text = text.replace(old, new)
    module.write_text(text)
    venv.install(where / "broken-svc")
    return venv.nexusd("check", "broken-svc", timeout=600)


def row(table: str, name: str) -> tuple[str, str]:
    match = re.search(rf"^  (PASS|FAIL|SKIP)\s+{re.escape(name)}\s+(.*)$", table, re.M)
    assert match, f"no row {name!r} in:\n{table}"
    return match.group(1), match.group(2)


def test_fails_with_a_non_zero_exit(broken):
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert re.search(r"^\d+ passed, [1-9]\d* failed", broken.stdout, re.M)


def test_names_the_missing_readiness_check(broken):
    status, detail = row(broken.stdout, "readyz")
    assert status == "FAIL" and "no readiness check bound" in detail


def test_names_each_plain_text_error(broken):
    for check in ("bad JSON", "wrong type"):
        status, detail = row(broken.stdout, f"POST /v1/broken-svc/echo: {check}")
        assert status == "FAIL" and "not a JSON error" in detail and "text/plain" in detail, detail
    # What the runtime still does for it (method, body limit) passes: only the handler's own errors fail.
    assert row(broken.stdout, "POST /v1/broken-svc/echo: wrong method")[0] == "PASS"
    assert row(broken.stdout, "POST /v1/broken-svc/echo: too large")[0] == "PASS"


def test_unknown_service_fails():
    report = run_contract("no-such-service-anywhere")
    assert not report.ok and report.results[0].status == FAIL
    assert "unknown service" in report.table()


def test_checks_a_running_service_by_url(venv, tmp_path):
    with run_service("template", tmp_path) as template:
        proc = venv.nexusd("check", "template", "--url", template.url)
        assert template.proc.poll() is None  # --url: never stopped by the check
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row(proc.stdout, "metadata")[0] == "PASS"
    for name in ("READY=1", "SIGTERM drain"):
        status, detail = row(proc.stdout, name)
        assert status == "SKIP" and "--url" in detail


def test_packaged_schema_is_the_docs_schema():
    # `nexusd check` validates against the copy inside the package (an installed nexusd has no docs/).
    assert SCHEMA_PATH.read_text() == (REPO / "docs" / "metadata.schema.json").read_text() == json_schema(), (
        "regenerate both: python -c 'from nexusd.runtime.metadata import json_schema; print(json_schema(), end=\"\")'"
        " | tee docs/metadata.schema.json > nexusd/authoring/metadata.schema.json")


def test_unit_check_is_skipped_with_a_note_without_systemd_analyze(venv, tmp_path):
    # A PATH with python alone: no systemd-analyze, as on a machine without systemd.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(venv.python)
    proc = venv.nexusd("check", "template", PATH=str(tmp_path / "bin"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, detail = row(proc.stdout, "unit")
    assert status == "SKIP" and "systemd-analyze is not installed" in detail


def test_a_service_that_cannot_start_fails_with_its_log(venv):
    proc = venv.nexusd("check", "template", "--env", "NEXUS_TEMPLATE_WARMUP=-1")
    assert proc.returncode == 1
    status, detail = row(proc.stdout, "start")
    assert status == "FAIL" and "exited with 78" in detail
    assert "NEXUS_TEMPLATE_WARMUP" in proc.stdout  # the service's own one-line reason, from its log


def test_each_route_is_checked_in_its_declared_error_format(venv, tmp_path):
    # Routes in Anthropic's and Ollama's formats (Endpoint.errors) pass in their own shape, read
    # from the declaration, not guessed from the path.
    assert venv.nexusd("new", "formats-svc", "--dir", str(tmp_path)).returncode == 0
    module = tmp_path / "formats-svc" / "formats_svc" / "__init__.py"
    text = module.read_text()
    old = '        return [Endpoint("POST", "/v1/formats-svc/echo", self.echo, "formats-svc.echo", max_body=64 * 1024)]\n'
    assert old in text
    module.write_text(text.replace(old, (
        "        return [\n"
        '            Endpoint("POST", "/v1/formats-svc/a", self.echo, "formats-svc.a", errors="anthropic"),\n'
        '            Endpoint("POST", "/v1/formats-svc/o", self.echo, "formats-svc.o", errors="ollama"),\n'
        "        ]\n")))
    venv.install(tmp_path / "formats-svc")
    proc = venv.nexusd("check", "formats-svc", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label, shape in (("POST /v1/formats-svc/a", "anthropic"), ("POST /v1/formats-svc/o", "ollama")):
        for check in ("wrong method", "bad JSON", "wrong type", "not JSON", "too large"):
            status, detail = row(proc.stdout, f"{label}: {check}")
            assert status == "PASS" and f"{shape} envelope" in detail, detail


@pytest.mark.parametrize("jsonschema_installed", [True, False])
def test_metadata_validation_with_and_without_jsonschema(jsonschema_installed, monkeypatch, capsys):
    import json
    import sys

    from nexusd.authoring.contract import validate_metadata
    from nexusd.authoring.report import Failed
    from nexusd.cli import main

    if not jsonschema_installed:  # as after `pip install nexusd` without the `check` extra
        monkeypatch.setitem(sys.modules, "jsonschema", None)
    assert main(["metadata", "template"]) == 0
    doc = json.loads(capsys.readouterr().out)
    how = validate_metadata(doc)
    assert ("metadata.schema.json" if jsonschema_installed else "nexusd's metadata models") in how
    doc["service"]["surprise"] = 1
    with pytest.raises(Failed, match="surprise"):
        validate_metadata(doc)
