"""A real systemd (the host's) booted as PID 1 in private namespaces (sandbox.sh), and a venv
that its units can execute. Root only; callers skip with the reason `unavailable()` gives."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "sandbox.sh"
# Dependency wheels and the venv survive between runs here: only the first run downloads.
CACHE = Path(os.environ.get("NEXUS_TEST_SYSTEMD_CACHE", "/srv/nexus-test-systemd"))
WHEELS = CACHE / "wheels"
VENVS = CACHE
# Debian's interpreter: the units run as a dynamic user, which cannot enter /root (pyenv).
SYSTEM_PYTHON = "/usr/bin/python3"


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to boot systemd in namespaces"
    for tool in ("unshare", "nsenter", "script", "systemctl"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "no systemd at /usr/lib/systemd/systemd"
    if not Path(SYSTEM_PYTHON).exists():
        return f"no {SYSTEM_PYTHON} for the venv the units execute"
    return None


def _build_wheel(out: Path) -> Path:
    """nexusd's wheel from the working tree; without build isolation when setuptools is here."""
    # From a clean copy of what the wheel holds: an in-tree build/ could carry stale modules.
    src = out / "src"
    shutil.copytree(REPO / "nexusd", src / "nexusd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    base = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "wheel", "--no-deps",
            "-w", str(out), str(src)]
    try:
        import setuptools  # noqa: F401

        cmd = [*base, "--no-build-isolation"]
    except ImportError:
        cmd = base
    proc = subprocess.run(cmd, capture_output=True, text=True)  # quiet unless it fails
    if proc.returncode != 0:
        raise RuntimeError(f"building the nexusd wheel failed:\n{proc.stdout}\n{proc.stderr}")
    return next(out.glob("nexusd-*.whl"))


def make_venv(work: Path) -> Path:
    """A world-readable venv with nexusd pip-installed (with its dependencies), in a directory
    the sandbox sees and the units may execute: on /, not under /root (0700), /tmp or /var/tmp
    (PrivateTmp= hides those). The venv with the dependencies is kept between runs, keyed by
    pyproject.toml; nexusd itself is built and installed again every time."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = VENVS / f"venv-{key}"
    pip = [str(venv / "bin/python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    wheel = _build_wheel(work)
    WHEELS.mkdir(parents=True, exist_ok=True)
    offline = [*pip, "install", "--no-index", "--find-links", str(WHEELS)]
    if not (venv / "bin/python").exists():
        VENVS.mkdir(parents=True, exist_ok=True)
        VENVS.chmod(0o755)
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
        if subprocess.run([*offline, str(wheel)], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run([*pip, "wheel", "-w", str(WHEELS), str(wheel)], check=True)  # fills the cache
    # A normal install (dependencies resolved, here all present) and a fresh copy of nexusd.
    subprocess.run([*offline, "--force-reinstall", "--no-deps", str(wheel)], check=True)
    subprocess.run([*offline, str(wheel)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    return venv


def wheelhouse(work: Path, extra: str) -> Path:
    """nexusd's wheel from the working tree, in a directory the sandbox sees, with the wheels of
    its dependencies and of `extra` in WHEELS (downloaded from PyPI once, then reused)."""
    built = _build_wheel(work)
    WHEELS.mkdir(parents=True, exist_ok=True)
    here = CACHE / "nexusd-wheel"
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir()
    wheel = Path(shutil.copy(built, here))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    req = f"{wheel}[{extra}]"
    offline = subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--no-index",
                              "--find-links", str(WHEELS), req], capture_output=True)  # all cached?
    if offline.returncode != 0:
        subprocess.run([*pip, "wheel", "-w", str(WHEELS), req], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(CACHE)], check=True)
    return wheel


class Sandbox:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.pid = 0

    def start(self) -> Sandbox:
        self.state.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SANDBOX_DIR": str(self.state)}
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"sandbox did not boot: {proc.stderr}\n{self.console()[-3000:]}")
        self.pid = int(proc.stdout.split()[-1])
        return self

    def stop(self) -> None:
        env = {**os.environ, "SANDBOX_DIR": str(self.state)}
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=90, check=False)

    def console(self) -> str:
        try:
            return (self.state / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def root(self) -> Path:
        """The sandbox's / as seen from the host."""
        return Path(f"/proc/{self.pid}/root")

    def run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-a", *cmd], capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} → {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *matches: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, *matches).stdout


if __name__ == "__main__":  # manual use: python -m tests.units.sandbox DIR → boots, prints PID 1
    print(Sandbox(Path(sys.argv[1])).start().pid)
