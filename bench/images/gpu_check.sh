#!/usr/bin/env bash
# The images service's GPU check (bench/images/gpu_check.py) on a CUDA machine whose Python
# lacks diffusers etc.: wheels carried in .whl/ are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}
if ! python3 -c "import diffusers, pydantic_settings" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 bench/images/gpu_check.py --out "$OUT" "$@" 2>&1 | grep -v -e '^Loading' -e 'requires torchvision' | tee "$OUT/gpu_check.log"
