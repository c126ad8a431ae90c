#!/usr/bin/env bash
# Installs ssl_jax and its pinned dependencies into ./.venv (once) and runs the
# test suite on the CPU with 8 simulated devices (tests/conftest.py sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SSL_JAX_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r requirements.txt -e .
exec "$venv/bin/python" -m pytest -q -n 2 --dist loadfile "$@"
