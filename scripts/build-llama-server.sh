#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` and `llama-batched-bench` for the LLM benchmark
# (`python -m bench llm`, baseline (b) and the batched-decode ceiling). Benchmarks only: CI never runs this.
#
# The source is the llama.cpp vendored in the llama-cpp-python sdist of the SAME version as the wheel the
# engine runs, built with the same portable flags as scripts/build-wheels.sh (the default -march=native
# build dies with SIGILL on CPUs with AMX), so the baseline runs the same kernels as the engine.
# The binaries are cached in .wheels/llama.cpp-<version>/bin/ (gitignored); a second run is a no-op.
#
#   scripts/build-llama-server.sh            # version of the wheel in .wheels/, else of the venv's llama_cpp
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=4 scripts/build-llama-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

version="${LLAMA_CPP_PYTHON_VERSION:-}"
if [[ -z "$version" ]]; then
  wheel=$(ls .wheels/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
  if [[ -n "$wheel" ]]; then
    version=$(basename "$wheel" | cut -d- -f2)
  else
    version=$("${PYTHON:-python3}" -c 'import llama_cpp; print(llama_cpp.__version__)')
  fi
fi
dest=".wheels/llama.cpp-$version"
if [[ -x "$dest/bin/llama-server" && -x "$dest/bin/llama-batched-bench" ]]; then
  echo "cached: $dest/bin"; ls "$dest/bin"; exit 0
fi

work="$dest/.build"
rm -rf "$work"; mkdir -p "$work"
"${PYTHON:-python3}" -m pip download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$version"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src" -B "$work/cmake" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$work/cmake" -j "${JOBS:-2}" --target llama-server llama-batched-bench

mkdir -p "$dest/bin"
cp "$work/cmake/bin/llama-server" "$work/cmake/bin/llama-batched-bench" "$dest/bin/"
rm -rf "$work"
echo "built: $dest/bin"; ls "$dest/bin"
