#!/usr/bin/env bash
# Installs ssl_jax and its pinned dependencies into ./.venv (once) and runs the
# test suite on the CPU with 8 simulated devices (tests/conftest.py sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
# libtpu for the TPU ahead-of-time compile test, kept off the venv's path.
if [ ! -d "$venv/libtpu/libtpu" ]; then
  "$PY" -m pip install -q --no-deps --target "$venv/libtpu" -r requirements-tpu.txt
fi
exec "$PY" -m pytest -q -n 2 --dist loadfile "$@"
