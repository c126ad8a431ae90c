#!/usr/bin/env bash
# Pre-trains on a Cloud TPU VM pod slice: create it, copy and install ssl_jax on
# every worker, run the same command on all workers (JAX finds its peers
# itself), tear it down.
#
#   bash launch/tpu_pod.sh all --name=ssl-v4 --zone=us-central2-b --type=v4-32 \
#       --config=configs/simclr.py:imagenet2012 --workdir=gs://BUCKET/runs/simclr \
#       -- --config.data.data_dir=gs://BUCKET/tfds
#
# Steps (run one at a time, or 'all'): create, install, run, delete.
# Data and workdir must be on GCS (every worker reads and writes them).
# A preempted run resumes when 'run' is started again with the same workdir.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}

[ $# -ge 1 ] || usage
step=$1
shift
name="" zone="" type="" config="" workdir=""
version=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --type=*) type=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --) shift; extra=("$@"); break ;;
    *) echo "Unknown argument: $1" >&2; usage ;;
  esac
  shift
done
[ -n "$name" ] && [ -n "$zone" ] || { echo "--name and --zone are required." >&2; exit 2; }

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$zone"; }
on_all() { tpu ssh "$name" --worker=all --command="$1"; }

create() {
  [ -n "$type" ] || { echo "create needs --type (e.g. v4-32)." >&2; exit 2; }
  tpu create "$name" --accelerator-type="$type" --version="$version"
}

install() {
  local archive
  archive=$(mktemp --suffix=.tar.gz)
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  tpu scp "$archive" "$name":ssl_jax.tar.gz --worker=all
  rm -f "$archive"
  on_all "mkdir -p ssl_jax && tar -xzf ssl_jax.tar.gz -C ssl_jax && cd ssl_jax && \
    python3 -m pip install -q -r requirements.txt -e . 'jax[tpu]'"
}

run() {
  [ -n "$config" ] && [ -n "$workdir" ] || {
    echo "run needs --config and --workdir (gs://...)." >&2; exit 2; }
  local args
  args=$(printf ' %q' "${extra[@]}")
  on_all "cd ssl_jax && python3 -m ssl_jax.main --config=$config --workdir=$workdir$args"
}

delete() { tpu delete "$name" --quiet; }

case $step in
  create) create ;;
  install) install ;;
  run) run ;;
  delete) delete ;;
  all) create; install; run; delete ;;
  *) usage ;;
esac
