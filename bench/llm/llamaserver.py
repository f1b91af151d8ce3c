"""Baseline (b) of the concurrency benchmark: llama.cpp's own `llama-server`.

Built by `scripts/build-llama-server.sh` from the llama.cpp vendored in the llama-cpp-python sdist
of the installed version (same commit and portable CPU flags as the engine's wheel) into
`.wheels/llama.cpp-<version>/bin/`; NEXUS_BENCH_LLAMA_CPP_BIN names another folder. Run with the
engine's settings: `-np P -c P×ctx -t T` (context per slot = ctx), non-unified KV (one KV stream
per slot, as the engine's), the engine's flash-attention setting and batch size, no prompt cache in
RAM; `ignore_eos` bans end-of-generation, so every stream produces exactly the asked tokens.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from bench.common import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]


def bin_dir() -> Path:
    import llama_cpp

    env = os.environ.get("NEXUS_BENCH_LLAMA_CPP_BIN")
    return Path(env) if env else REPO / ".wheels" / f"llama.cpp-{llama_cpp.__version__}" / "bin"


def binary(name: str = "llama-server") -> Path | None:
    path = bin_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def start(exe: Path, gguf: str, threads: int, ctx: int, parallel: int, n_batch: int,
          flash_attn: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [str(exe), "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(parallel),
           "-c", str(parallel * ctx), "-t", str(threads), "-tb", str(threads), "--no-kv-unified",
           "-fa", "on" if flash_attn else "off", "-b", str(n_batch), "-ub", str(n_batch),
           "--cache-ram", "0", "--no-webui"]
    log = tempfile.TemporaryFile()
    svc = subprocess.Popen(cmd, stdout=log, stderr=log)
    wait_ready(svc, log, port, "/health", 180, "llama-server")
    return svc, port
