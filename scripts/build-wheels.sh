#!/usr/bin/env bash
# Build the wheels that must not be compiled by every venv into .wheels/ (once per machine).
# llama-cpp-python compiles llama.cpp; the default -march=native build dies with SIGILL on CPUs
# with AMX (ggml_backend_amx_mul_mat), so build with portable flags. pip's wheel cache ignores
# CMAKE_ARGS, hence --no-cache-dir and a folder of our own.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .wheels
if ! ls .wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then
  python3 -m venv .wheels/.build-venv
  .wheels/.build-venv/bin/pip install -q -U pip wheel
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
    .wheels/.build-venv/bin/pip wheel --no-deps --no-cache-dir -w .wheels "llama-cpp-python>=0.3.7"
  rm -rf .wheels/.build-venv
fi
ls .wheels
