#!/usr/bin/env bash
# Install what the tests need (in venvs: works where the system Python refuses global
# installs, PEP 668) and run the whole suite through nox. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .wheels ] || scripts/build-wheels.sh
python3 -m venv .venv-nox
.venv-nox/bin/pip install -q nox
exec .venv-nox/bin/nox -s tests lint -- "$@"
