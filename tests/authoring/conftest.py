"""A fresh virtual environment per test session, as a service author has: it sees this Python's
packages (through a .pth file: nexusd's dependencies, pytest, setuptools; no download) and
this checkout's nexusd (PYTHONPATH); generated packages are `pip install -e`'d into it only,
never into the test environment itself (their entry points would appear in every other test)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.proc import REPO


@dataclass
class Venv:
    root: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("NEXUS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "VIRTUAL_ENV")}
        env.update(PYTHONPATH=str(REPO), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
        return env

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300,
            **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.python, *args], capture_output=True, text=True, cwd=cwd,
                              env=self.env(**env), timeout=timeout)

    def nexusd(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.run("-m", "nexusd.cli", *args, **kwargs)

    def run_background(self, *args: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen([self.python, *args], stdout=out, stderr=out, env=self.env(**env))

    def install(self, package: Path) -> None:
        # Offline and quick: no index, no isolated build env (setuptools comes from this Python).
        proc = self.run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e", str(package))
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Venv:
    root = tmp_path_factory.mktemp("author") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    # --system-site-packages would reach the base interpreter's packages, not this venv's: a .pth
    # file appends this environment's site directories after the new one's own.
    inner = subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(inner) / "_outer_environment.pth").write_text("\n".join(outer) + "\n")
    return Venv(root)


@pytest.fixture(scope="session")
def demo(venv, tmp_path_factory) -> Path:
    """`nexusd new demo-svc`, its version set to 2.5.0 (not nexusd's), installed in the venv."""
    where = tmp_path_factory.mktemp("src")
    proc = venv.nexusd("new", "demo-svc", "--dir", str(where))
    assert proc.returncode == 0, proc.stderr
    package = where / "demo-svc"
    pyproject = package / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "2.5.0"', 1))
    venv.install(package)
    return package
