#!/usr/bin/env bash
# Install nexusd into ./.venv and run it in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q -e .
exec .venv/bin/nexusd run template
