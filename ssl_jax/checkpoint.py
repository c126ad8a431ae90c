"""Checkpoints with orbax: asynchronous saves, checksums, quarantine, automatic resume.

A checkpoint holds two items: ``state`` (the whole TrainState pytree: step,
params, batch_stats, opt_state, method_state, rng, skipped_updates) and
``meta`` (JSON: the run config, the data position and a CRC-32 checksum of
every array). Because the data order is a pure function of (seed, step), the
data position is the step plus the seed and global batch size it was computed
with; resuming checks they still match.

What can go wrong on disk, and what happens:

- A crash or SIGKILL mid-save: orbax writes into a temporary directory and
  renames it when complete (and deletes older checkpoints for ``max_to_keep``
  only after that), so resume never sees the half-written one.
- A checkpoint damaged afterwards (truncated or deleted file, missing metadata,
  flipped bits, a half-copied step directory): ``restore_latest`` finds it by
  its checksums or its failing restore, logs a warning naming it, moves it
  (never deletes it) to ``workdir/checkpoints_quarantine/`` and restores the
  previous one.
- A failing save (disk full, permissions): ``CheckpointSaveError`` naming the
  step and the last good checkpoint; older checkpoints are untouched.

Checkpoints hold arrays and JSON only: nothing is ever unpickled.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any
import zlib

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax import files

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "checkpoints_quarantine"
CHECKSUMS = "checksums"


class CheckpointDamagedError(ValueError):
  """A checkpoint whose arrays or metadata do not match what was written."""


class CheckpointMismatchError(ValueError):
  """An intact checkpoint of a different train state (the config changed)."""


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed; the older checkpoints are untouched."""


def checkpoint_dir(workdir: str) -> str:
  return files.join(files.absolute(workdir), CHECKPOINT_DIR)


def quarantine_dir(workdir: str) -> str:
  return files.join(files.absolute(workdir), QUARANTINE_DIR)


def make_manager(workdir: str, *, max_to_keep: int,
                 asynchronous: bool = True) -> ocp.CheckpointManager:
  """An orbax CheckpointManager for ``workdir/checkpoints``.

  It keeps the newest ``max_to_keep`` checkpoints (``validate_config`` asks for
  at least 2, so a checkpoint damaged after it was written always has a
  predecessor); the training loop decides when to save. Orbax writes each
  checkpoint into a temporary directory and renames it when complete, and
  deletes old checkpoints only after that, so a crash mid-save never leaves a
  checkpoint that resume would pick up nor loses an old one.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      enable_async_checkpointing=asynchronous,
      create=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def _leaf_name(path) -> str:
  """'opt_state/3/trace/encoder/conv/kernel': the same for TrainState and raw dicts."""
  parts = []
  for entry in path:
    for attr in ("name", "key", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def array_checksums(tree: Any) -> dict[str, list]:
  """``{leaf name: [crc32 of its bytes, shape, dtype]}`` of a pytree of host arrays."""
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.asarray(leaf)
    # The C-ordered bytes, without a copy when already contiguous (CRC-32 runs
    # at ~1 GB/s: well under a second for a ResNet-50 state with its momentum).
    crc = zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    sums[_leaf_name(path)] = [crc, list(array.shape), str(array.dtype)]
  return sums


def _abstract_signature(tree: Any) -> dict[str, list]:
  return {_leaf_name(path): [list(leaf.shape), str(np.dtype(leaf.dtype))]
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host_copy(x):
  """A host copy of a (replicated) array; works on every process of a multi-host job."""
  if isinstance(x, jax.Array) and x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return jax.device_get(x)


def verify(tree: Any, meta: dict, where: str) -> None:
  """Raises ``CheckpointDamagedError`` unless ``tree``'s arrays match ``meta``'s checksums."""
  expected = meta.get(CHECKSUMS) if isinstance(meta, dict) else None
  if not expected:
    raise CheckpointDamagedError(f"{where}: its metadata has no array checksums")
  actual = array_checksums(jax.tree.map(_host_copy, tree))
  if set(actual) != set(expected):
    missing = sorted(set(expected) - set(actual))[:3]
    extra = sorted(set(actual) - set(expected))[:3]
    raise CheckpointDamagedError(f"{where}: arrays missing {missing}, unexpected {extra}")
  for name, value in actual.items():
    if value != list(expected[name]):
      raise CheckpointDamagedError(
          f"{where}: array {name!r} has checksum/shape/dtype {value}, "
          f"written as {expected[name]}")


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Starts saving ``state`` and ``meta`` (plus the arrays' checksums) at ``step``.

  Returns once the arrays are copied off the devices (so the caller may donate
  them to the next step); the write to disk finishes in the background. The
  checksums are computed from a host copy of the (replicated) state: one host
  transfer per checkpoint, none per step.

  Raises:
    CheckpointSaveError: this save, or the previous asynchronous one, failed.
  """
  meta = dict(meta, **{CHECKSUMS: array_checksums(jax.tree.map(_host_copy, state))})
  try:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, step, e) from e


def wait_until_finished(manager: ocp.CheckpointManager) -> None:
  """Waits for the pending asynchronous save; its failure is a ``CheckpointSaveError``."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _save_error(manager, None, e) from e


def _save_error(manager, step, error) -> CheckpointSaveError:
  try:
    manager.reload()
    good = manager.latest_step()
  except Exception:  # pylint: disable=broad-except
    good = None
  what = f"step {step}" if step is not None else "the last checkpoint"
  return CheckpointSaveError(
      f"Saving {what} into {manager.directory} failed ({type(error).__name__}: {error}). "
      f"Older checkpoints are untouched (latest: step {good}). Free disk space or fix the "
      "permissions of the workdir, then rerun to resume.")


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The JSON ``meta`` item of checkpoint ``step``."""
  restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return restored["meta"]


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
  """(state, meta) of checkpoint ``step`` (default: the newest), verified.

  Restoring into an abstract target (``jax.ShapeDtypeStruct`` leaves with
  shardings) gives back the same pytree types; without one, optax states
  would come back as plain lists and dicts.

  Raises:
    FileNotFoundError: no checkpoint at all.
    CheckpointMismatchError: the checkpoint holds a different state layout (the
      model, method or optimizer config changed): not damage, nothing is moved.
    CheckpointDamagedError (or orbax/tensorstore errors): the checkpoint is damaged.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
  where = f"checkpoint {os.path.join(str(manager.directory), str(step))}"
  meta = read_meta(manager, step)
  if not isinstance(meta, dict) or not meta.get(CHECKSUMS):
    raise CheckpointDamagedError(f"{where}: its metadata has no array checksums")
  written = {name: value[1:] for name, value in meta[CHECKSUMS].items()}
  wanted = _abstract_signature(abstract_state)
  if written != wanted:
    differing = sorted(set(written) ^ set(wanted)) or sorted(
        name for name in wanted if written[name] != wanted[name])
    name = differing[0]
    raise CheckpointMismatchError(
        f"{where} holds a different train state than this config builds (first difference: "
        f"{name!r}: {written.get(name)} in the checkpoint, {wanted.get(name)} now). The model, "
        "method or optimizer config changed: restore it, or start a new workdir with "
        "config.init_from pointing at this run.")
  restored = manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              meta=ocp.args.JsonRestore()),
  )
  verify(restored["state"], restored["meta"], where)
  return restored["state"], restored["meta"]


def quarantine(manager: ocp.CheckpointManager, step: int, reason: str) -> str:
  """Moves checkpoint ``step`` to ``<workdir>/checkpoints_quarantine/`` (never deletes it)."""
  source = files.join(str(manager.directory), str(step))
  if files.is_url(source):
    # Object stores cannot rename a directory; never delete a checkpoint.
    raise RuntimeError(
        f"Checkpoint {source} is damaged ({reason}). Move it out of the checkpoints "
        f"directory (e.g. gsutil -m mv {source} "
        f"{os.path.join(os.path.dirname(str(manager.directory)), QUARANTINE_DIR)}/) "
        "and rerun to resume from the previous one.")
  target_dir = os.path.join(os.path.dirname(str(manager.directory)), QUARANTINE_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  while os.path.exists(target):
    target += "_"
  if jax.process_index() == 0:
    shutil.move(source, target)
  logging.warning("Checkpoint %s is damaged (%s); moved it to %s and trying the previous one.",
                  source, reason, target)
  manager.reload()
  return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any):
  """(state, meta) of the newest good checkpoint, or None if there is none.

  Damaged checkpoints (see the module docstring) are quarantined one by one,
  newest first, each with a warning naming it.

  Raises:
    CheckpointMismatchError: an intact checkpoint of a different state layout.
    RuntimeError: every checkpoint was damaged (all are kept in quarantine).
  """
  manager.reload()
  moved = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore(manager, abstract_state, step)
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore read errors)
      moved.append(quarantine(manager, step, f"{type(e).__name__}: {e}"))
  if moved:
    raise RuntimeError(
        f"Every checkpoint in {manager.directory} is damaged; they were moved to "
        f"{os.path.dirname(moved[0])} (nothing was deleted). Rerun to start afresh, or copy "
        "a repaired checkpoint back into the checkpoints directory.")
  return None


def _resolve(path: str) -> tuple[str, list[int]]:
  """(checkpoints directory, steps newest first) for a workdir, checkpoints dir or step dir."""
  path = files.absolute(path).rstrip("/")
  for candidate in (checkpoint_dir(path), path):
    if files.is_dir(candidate):
      steps = ocp.utils.checkpoint_steps(candidate)
      if steps:
        return candidate, sorted(steps, reverse=True)
  parent, name = path.rsplit("/", 1)
  if name.isdigit() and files.is_dir(path):
    return parent, [int(name)]
  raise FileNotFoundError(
      f"No ssl_jax checkpoint found at {path!r}. Pass a training workdir (it holds "
      f"'{CHECKPOINT_DIR}/<step>/'), its '{CHECKPOINT_DIR}' directory, or one step directory.")


def restore_raw(path: str, sharding: jax.sharding.Sharding | None = None
                ) -> tuple[dict, dict, int]:
  """(state as nested dicts of host arrays, meta, step) from any checkpoint path.

  Used where the optimizer structure is unknown or irrelevant: ``init_from``,
  ``load_encoder`` and the evaluation protocols only need params and batch
  statistics. Works whatever
  the device topology that wrote the checkpoint (8 devices, 2 hosts, a pod):
  every array is restored whole onto this process's first local device, with
  shapes and dtypes from the checkpoint's own metadata. The newest checkpoint
  whose checksums match is used; damaged ones are skipped with a warning (and
  left where they are: this is a read-only use).

  Args:
    path: a workdir, its ``checkpoints`` directory or one step directory.
    sharding: where each (whole) array is restored; default the first local
      device. Every state array is replicated in training, so each process
      restores all of it.
  """
  directory, steps = _resolve(path)
  local = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  errors = []
  for step in steps:
    step_dir = os.path.join(directory, str(step))
    where = f"checkpoint {step_dir}"
    try:
      checkpointer = ocp.StandardCheckpointer()
      try:
        tree = checkpointer.metadata(os.path.join(step_dir, "state")).item_metadata
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local), tree)
        state = jax.device_get(checkpointer.restore(os.path.join(step_dir, "state"), target))
      finally:
        checkpointer.close()
      with ocp.CheckpointManager(directory) as manager:
        meta = read_meta(manager, step)
      if isinstance(meta, dict) and CHECKSUMS not in meta:
        # Written before checkpoints carried checksums: usable, not verifiable.
        logging.warning("%s has no checksums (an older ssl_jax wrote it); not verified.", where)
      else:
        verify(state, meta, where)
      return state, meta, step
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Skipping damaged %s: %s", where, e)
      errors.append(f"{where}: {e}")
  raise CheckpointDamagedError(f"No intact checkpoint at {path!r}: " + "; ".join(errors))
