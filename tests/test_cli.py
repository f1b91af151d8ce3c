"""`nexusd list`, `nexusd metadata`, `nexusd env-example` and `--version`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from nexusd import __version__
from nexusd.cli import main
from nexusd.runtime.envfile import env_example
from nexusd.runtime.settings import SharedSettings, load_settings
from nexusd.services import load_service, service_names

REPO = Path(__file__).resolve().parents[1]


def test_list_names_every_registered_service(capsys):
    assert main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == service_names() and "template" in listed


def test_env_example_is_generated_from_the_settings(capsys):
    assert main(["env-example", "template"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert all(not line or line.startswith("#") for line in lines)  # a file to uncomment from
    assert "#NEXUS_TEMPLATE_PORT=9000" in lines and "#NEXUS_TEMPLATE_WARMUP=0" in lines
    assert "#NEXUS_ETCD_ENDPOINTS=" in lines and "#NEXUS_ACCESS_LOG=1" in lines
    assert "# Prefix added to every echo" in lines  # field descriptions become comments



@pytest.mark.parametrize("name", service_names())
def test_env_example_uncommented_as_is_is_a_valid_config(name, monkeypatch):
    # An admin who uncomments a line without changing it must not get exit 78.
    cls = load_service(name)
    for line in env_example(cls).splitlines():
        if line.startswith("#NEXUS_"):
            var, _, value = line[1:].partition("=")
            monkeypatch.setenv(var, value)
    load_settings(cls.Settings)
    load_settings(SharedSettings)

def test_metadata_without_serving_validates(capsys):
    assert main(["metadata", "template"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, json.loads((REPO / "docs" / "metadata.schema.json").read_text()))
    assert doc["endpoints"][0]["path"] == "/v1/echo"


def test_unknown_service_is_an_error():
    with pytest.raises(SystemExit, match="unknown service 'nope'"):
        main(["env-example", "nope"])


def test_version_from_the_installed_command():
    script = Path(sys.executable).parent / "nexusd"  # the [project.scripts] console script
    assert script.exists(), "nexusd is not installed in this venv"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"nexusd {__version__}"
