"""Checkpoints with orbax: asynchronous saves, ``max_to_keep``, automatic resume.

A checkpoint holds two items: ``state`` (the whole TrainState pytree: step,
params, batch_stats, opt_state, method_state, rng) and ``meta`` (JSON: the run
config and the data position). Because the data order is a pure function of
(seed, step), the data position is the step plus the seed and global batch
size it was computed with; resuming checks they still match.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, *, max_to_keep: int,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """An orbax CheckpointManager for ``workdir/checkpoints``.

  It keeps the newest ``max_to_keep`` checkpoints; the training loop decides
  when to save (every ``config.checkpoint_every_steps`` and at the end). Orbax writes each
  checkpoint into a temporary directory and renames it when complete, so a
  crash mid-save never leaves a checkpoint that resume would pick up.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      enable_async_checkpointing=asynchronous,
      create=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Starts saving ``state`` and ``meta`` at ``step``.

  Returns once the arrays are copied off the devices (so the caller may donate
  them to the next step); the write to disk finishes in the background.
  """
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
  """(state, meta) restored into the structure/shardings of ``abstract_state``.

  Restoring into an abstract target (``jax.ShapeDtypeStruct`` leaves with
  shardings) gives back the same pytree types; without one, optax states
  would come back as plain lists and dicts.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
  restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              meta=ocp.args.JsonRestore()),
  )
  return restored["state"], restored["meta"]


def _resolve(path: str) -> tuple[str, int]:
  """(checkpoints directory, step) for a workdir, checkpoints dir or step dir."""
  path = os.path.abspath(path)
  for candidate in (checkpoint_dir(path), path):
    if os.path.isdir(candidate):
      steps = ocp.utils.checkpoint_steps(candidate)
      if steps:
        return candidate, max(steps)
  parent, name = os.path.split(path.rstrip("/"))
  if name.isdigit() and os.path.isdir(path):
    return parent, int(name)
  raise FileNotFoundError(
      f"No ssl_jax checkpoint found at {path!r}. Pass a training workdir (it holds "
      f"'{CHECKPOINT_DIR}/<step>/'), its '{CHECKPOINT_DIR}' directory, or one step directory.")


def restore_raw(path: str) -> tuple[dict, dict, int]:
  """(state as nested dicts of host arrays, meta, step) from any checkpoint path.

  Used where the optimizer structure is unknown or irrelevant: ``init_from``
  and ``load_encoder`` only need params and batch statistics. Works whatever
  the device topology that wrote the checkpoint (8 devices, 2 hosts, a pod):
  every array is restored whole onto this process's first local device, with
  shapes and dtypes from the checkpoint's own metadata.
  """
  directory, step = _resolve(path)
  step_dir = os.path.join(directory, str(step))
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(os.path.join(step_dir, "state")).item_metadata
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), tree)
  state = jax.device_get(checkpointer.restore(os.path.join(step_dir, "state"), target))
  checkpointer.close()
  with ocp.CheckpointManager(directory) as manager:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return state, meta, step
