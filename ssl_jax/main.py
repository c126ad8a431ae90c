"""CLI: ``python -m ssl_jax.main --config=configs/simclr.py:cifar10 --workdir=DIR``.

Kept short (as flax's examples/imagenet): flags in, ``train_and_evaluate`` out.
``--config.<field>=value`` overrides any config field; the config is locked,
so a misspelled field is an error that names it.
"""

from __future__ import annotations

from ssl_jax import cpu_devices  # noqa: E402  (before JAX is imported)

cpu_devices.configure()

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/simclr.py:cifar10,runlocal.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and plots go here.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0, for multi-host runs outside TPU pods and SLURM (which are "
    "detected automatically). Needs --num_processes and --process_id.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so `--help` and flag errors do not pay for JAX/TF start-up.
  import jax  # pylint: disable=g-import-not-at-top
  from ssl_jax import parallel  # pylint: disable=g-import-not-at-top
  from ssl_jax import train  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  # Every process reaches here: shutting down is a barrier, so no process
  # exits while another still writes its part of the last checkpoint.
  parallel.shutdown_distributed()
  if jax.process_index() != 0:
    return
  if results.get("preempted"):
    # A clean exit (status 0): the scheduler restarts the same command, which resumes.
    print(f"ssl_jax preempted: checkpoint of step {results.get('step')} saved in "
          f"{_WORKDIR.value}; rerun the same command to resume.", flush=True)
    return
  logging.info("Final metrics: %s", results)
  summary = [f"step {results.get('step')}", f"loss {results.get('loss', float('nan')):.4f}"]
  if "knn_top1" in results:
    if "knn_top1_init" in results:
      summary.append(f"kNN top-1 {100 * results['knn_top1_init']:.2f}% (random init) -> "
                     f"{100 * results['knn_top1']:.2f}% (trained)")
    else:
      summary.append(f"kNN top-1 {100 * results['knn_top1']:.2f}%")
  print("ssl_jax done: " + "; ".join(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
