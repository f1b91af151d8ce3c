"""A real systemd (the host's) booted as PID 1 in private namespaces (sandbox.sh), and a venv
that its units can execute. Root only; callers skip with the reason `unavailable()` gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "sandbox.sh"
# Dependency wheels survive between runs here, so only the first run downloads from PyPI.
WHEELS = Path(os.environ.get("NEXUS_TEST_WHEELS", "/var/cache/nexus-test-wheels"))
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


def make_venv() -> Path:
    """A world-readable venv with nexusd installed normally (with its dependencies), in a
    directory that the sandbox sees (on /, not /tmp or /var/tmp: PrivateTmp= hides those)."""
    base = Path(tempfile.mkdtemp(prefix="nexus-units-test-", dir="/srv"))
    base.chmod(0o755)
    venv = base / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    WHEELS.mkdir(parents=True, exist_ok=True)
    build = base / "build"
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(build), str(REPO)], check=True,
                   stdout=subprocess.DEVNULL)
    wheel = next(build.glob("nexusd-*.whl"))
    offline = [*pip, "install", "--no-index", "--find-links", str(WHEELS), str(wheel)]
    if subprocess.run(offline, stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run([*pip, "wheel", "-w", str(WHEELS), str(wheel)], check=True)  # fills the cache
        subprocess.run(offline, check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return venv


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
