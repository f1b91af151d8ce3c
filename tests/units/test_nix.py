"""What can be checked of the Nix files without nixpkgs (no network here): every file parses, and
nix/pyproject.nix, which reads pyproject.toml with builtins only, evaluates to the package's
name, version and dependencies. The flake, package, module and VM test are NOT evaluated here."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not shutil.which("nix-instantiate"), reason="nix-instantiate is not installed (Debian: nix-bin)")


@pytest.mark.parametrize("path", ["flake.nix", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "nix").glob("*.nix"))])
def test_nix_file_parses(path):
    proc = subprocess.run(["nix-instantiate", "--parse", str(REPO / path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_pyproject_nix_follows_pyproject_toml():
    expr = f"import {REPO}/nix/pyproject.nix {{ pyprojectFile = {REPO}/pyproject.toml; }}"
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (got["pname"], got["version"]) == (project["name"], project["version"])
    assert len(got["dependencies"]) == len(project["dependencies"])
    assert "pydantic-settings" in got["dependencies"] and "prometheus-client" in got["dependencies"]
