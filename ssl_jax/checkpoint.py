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


def restore_raw(path: str, sharding: jax.sharding.Sharding | None = None
                ) -> tuple[dict, dict, int]:
  """(state as nested dicts of host arrays, meta, step) from any checkpoint path.

  Used where the optimizer structure is unknown or irrelevant: ``init_from``,
  ``load_encoder`` and the evaluation protocols only need params and batch
  statistics. Works whatever topology wrote the checkpoint (8 devices, a pod
  slice, one CPU): the abstract target is built from the checkpoint's own
  metadata (shapes and dtypes) with ``sharding`` for every array, so orbax
  never tries to recreate the saving mesh.

  Args:
    path: a workdir, its ``checkpoints`` directory or one step directory.
    sharding: where each (whole) array is restored; default the first local
      device. Every state array is replicated in training, so each process
      restores all of it.
  """
  directory, step = _resolve(path)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(leaf):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)
    return leaf

  handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    metadata = manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    abstract = jax.tree.map(target, tree)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
  state = jax.tree.map(jax.device_get, restored["state"])
  return state, restored["meta"], step
