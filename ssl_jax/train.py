"""The train state, the per-device train step and the training loop.

One step (DESIGN.md, "The flow of one step"): uint8 images sharded over the
mesh -> on-device augmentation -> the method's loss (global mean over the
``BATCH_AXIS``) -> gradients of the replicated params (``jax.shard_map``'s
autodiff already sums them over devices: no second ``pmean``) -> optax update
-> the method's post-update. Compiled once: ``jax.jit`` over ``jax.shard_map``
on a 1-D mesh, with the state donated.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import threading
import time
from typing import Any, Iterator

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from ssl_jax import augment
from ssl_jax import checkpoint
from ssl_jax import config_lib
from ssl_jax import data
from ssl_jax import diagnostics
from ssl_jax import epoch_hooks
from ssl_jax import evaluate
from ssl_jax.evaluate import plots
from ssl_jax import metrics_io
from ssl_jax import methods
from ssl_jax import microbatch
from ssl_jax import optim
from ssl_jax import parallel
from ssl_jax import watchdog
from ssl_jax.parallel import BATCH_AXIS, GROUP_AXIS, make_mesh


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; checkpointing it is checkpointing all.

  Attributes:
    step: int32 [] number of optimizer steps taken (= the data position).
    params: the method's trainable params ({'encoder', 'projector', ...}).
    batch_stats: BatchNorm running statistics (same tree layout; {} for GN+WS).
    opt_state: the optax state.
    method_state: what the method updates outside the optimizer (EMA target
      params, queues, ...); {} for SimCLR.
    rng: uint32 [2] raw key data of the run's root key (raw so orbax can store it).
    skipped_updates: int32 [] steps whose loss or gradients were not finite and
      whose update was skipped (``config.skip_nonfinite_updates``).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  rng: jax.Array
  skipped_updates: jax.Array


def _global_index(local_batch: int, axis_name) -> jax.Array:
  """int32 [local_batch] global example indices of this device's examples."""
  return jax.lax.axis_index(axis_name) * local_batch + jnp.arange(local_batch)


def train_step(state: TrainState, batch: dict, *, method, config, recipes, tx, schedule,
               total_steps: int, axis_name=BATCH_AXIS):
  """One optimizer step; per-device code run under ``jax.shard_map``.

  Args:
    state: the replicated TrainState.
    batch: this device's share: {'image': uint8 [n, H, W, 3]} (fixed-size
      datasets; cropped on device) or {'views': tuple of uint8 [n, S_v, S_v, 3]}
      (variable-size datasets; cropped on the host).
    method: the method module; config: the run config; recipes: the views.
    tx, schedule: the optax transformation and its learning-rate schedule.
    total_steps: length of the run (for the method's own schedules, e.g. BYOL's tau).

  Returns:
    (new_state, metrics): metrics are scalars averaged over the global batch,
    plus ``finite`` (1.0 iff the loss and every gradient are finite; the same
    on every device, as both are global). With ``config.skip_nonfinite_updates``
    a non-finite step keeps the old params, batch_stats, opt_state and
    method_state (the step and data position still advance) and counts itself
    in ``skipped_updates``; without it the loop stops at the next log interval.
  """
  images = batch["views"] if "views" in batch else batch["image"]
  local_batch = jax.tree.leaves(images)[0].shape[0]
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  aug_key, loss_key = jax.random.split(step_key)
  # Per-example keys are folded with the GLOBAL example index, so the views do
  # not depend on how the batch is split over devices (1 device == 8 devices).
  example_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      aug_key, _global_index(local_batch, axis_name))
  make_views = getattr(method, "make_views", None)
  if make_views is None:
    views = augment.views(example_keys, images, recipes)
  else:
    views = make_views(example_keys, images, recipes, config=config)
  loss_key = jax.random.fold_in(loss_key, jax.lax.axis_index(axis_name))

  loss_kwargs = {}
  if getattr(method, "USES_EXAMPLE_INDEX", False):
    # Methods with per-example state (DeepCluster's pseudo-labels and memory bank)
    # also get each example's dataset index; validate_config refuses micro-batches.
    loss_kwargs["example_index"] = batch["index"]
  if getattr(method, "USES_STEP", False):  # e.g. SwAV's queue, which starts at a step
    loss_kwargs["step"] = state.step
  (loss, (batch_stats, method_state, metrics)), grads = microbatch.value_and_grad(
      method, state.params, state.batch_stats, state.method_state, views, loss_key,
      config=config, axis_name=axis_name, num_chunks=config.get("microbatches", 1),
      loss_kwargs=loss_kwargs)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if hasattr(method, "project_params"):  # e.g. SwAV: prototypes back onto the unit sphere
    params = method.project_params(params, config)
  method_state = method.post_update(params, batch_stats, method_state, state.step + 1, config,
                                     total_steps=total_steps)
  grad_norm = parallel.global_norm(grads)
  # One device-side flag, fetched with the other metrics at log intervals: a
  # non-finite gradient makes the global norm non-finite.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  skipped = state.skipped_updates
  if config.get("skip_nonfinite_updates", False):
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, batch_stats, opt_state, method_state = keep(
        (params, batch_stats, opt_state, method_state),
        (state.params, state.batch_stats, state.opt_state, state.method_state))
    skipped = skipped + (~finite).astype(skipped.dtype)
  metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step), grad_norm=grad_norm,
                 finite=finite.astype(jnp.float32))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, method_state=method_state,
                            skipped_updates=skipped)
  return new_state, metrics


def compile_train_step(mesh, **static):
  """``jax.jit(jax.shard_map(train_step))`` with the state donated."""
  specs = state_specs(static["config"], static["method"], static["tx"])
  step = functools.partial(train_step, **static, axis_name=BATCH_AXIS)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(specs, P(BATCH_AXIS)),
                               out_specs=(specs, P())), donate_argnums=0)


def run_mesh(config, method, devices=None):
  """The run's mesh: one group (plain data parallelism) unless the method asks for more.

  A method with params sharded over groups of devices (DeeperCluster's
  sub-classifiers) defines ``mesh_groups(config, num_devices) -> int``.
  """
  devices = jax.devices() if devices is None else list(devices)
  groups = method.mesh_groups(config, len(devices)) if hasattr(method, "mesh_groups") else 1
  return make_mesh(devices, groups=groups)


def state_specs(config, method, tx):
  """PartitionSpecs of the TrainState: replicated (``P()``), except the params named
  in the method's ``GROUP_SHARDED_PARAMS`` and their optimizer state, which are
  split along their leading dimension over the mesh's groups (``P(GROUP_AXIS)``)."""
  sharded = set(getattr(method, "GROUP_SHARDED_PARAMS", ()))
  if not sharded:
    return P()
  shapes = jax.eval_shape(functools.partial(init_train_state, config, method, tx))

  def spec(path, _):
    names = {getattr(k, "key", getattr(k, "name", None)) for k in path}
    return P(GROUP_AXIS) if names & sharded else P()

  return jax.tree_util.tree_map_with_path(spec, shapes)


def state_shardings(config, method, tx, mesh):
  """``state_specs`` as NamedShardings on ``mesh`` (a pytree, or one sharding for all)."""
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s),
                      state_specs(config, method, tx),
                      is_leaf=lambda x: isinstance(x, P))


def init_train_state(config, method, tx) -> TrainState:
  """A fresh TrainState from ``config.seed`` (pure; jit or ``jax.eval_shape`` it)."""
  root = jax.random.key(config.seed)
  # Parameter init draws one normal tensor per layer; with threefry that
  # compiles for ~20 s on a CPU even for a tiny ResNet-18, with the 'rbg'
  # generator in ~2 s. Only the init uses it; the run's keys stay threefry.
  init_key = jax.random.key(config.seed, impl="rbg")
  params, batch_stats, method_state = method.init(init_key, config, None)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), method_state=method_state,
                    rng=jax.random.key_data(jax.random.fold_in(root, 1)),
                    skipped_updates=jnp.zeros((), jnp.int32))


def create_train_state(config, method, tx, mesh) -> TrainState:
  """A fresh TrainState from ``config.seed`` on ``mesh`` (see ``state_specs``)."""
  return jax.jit(functools.partial(init_train_state, config, method, tx),
                 out_shardings=state_shardings(config, method, tx, mesh))()


# Free space the checkpoints directory needs before training starts, in
# multiples of one checkpoint: one being written while the newest finished one
# (never deleted before the new one is complete) still exists.
FREE_SPACE_CHECKPOINTS = 2
# Fewest checkpoints retention keeps: a checkpoint damaged after it was written
# always has a predecessor to fall back on.
MIN_CHECKPOINTS_KEPT = 2


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects unknown fields, wrong types and inconsistent settings before any compute.

  Every problem is one line naming the field and the fix; all are reported at
  once. The checks that need the dataset (its size and image shape) are in
  ``validate_config_for_data``.

  Raises:
    ValueError: the config has problems.
  """
  errors = _config_errors(config)
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def _config_errors(config) -> list[str]:
  errors = []
  method = config.get("method", "")
  section = lambda name: config[name] if isinstance(
      config.get(name), (dict, ml_collections.ConfigDict)) else {}
  reference = config_lib.base_config(section("data").get("name") or "digits")
  optim_name = section("optim").get("name")
  if optim_name in optim.OPTIMIZERS:
    reference.optim = optim.default_optim_config(optim_name)
    # Fields make_optimizer accepts when present (with their defaults).
    for key, default in optim._OPTIONAL.items():  # pylint: disable=protected-access
      if key not in reference.optim:
        reference.optim[key] = default
  elif "optim" in config:
    errors.append(f"config.optim.name={optim_name!r}: unknown optimizer; use one of "
                  f"{list(optim.OPTIMIZERS)}")
  # Methods may add fields of their own to the model and augment sections
  # (there only near-miss typos of known fields are errors); every other
  # unknown field is an error.
  errors.extend(config_lib.check_fields(
      config, reference, open_keys=methods._METHODS,  # pylint: disable=protected-access
      open_sections=("model", "augment")))
  if errors:
    return errors  # The value checks below assume known fields of the right types.

  if method not in methods._METHODS:  # pylint: disable=protected-access
    errors.append(f"config.method={method!r}: unknown method; set it to one of "
                  f"{list(methods._METHODS)}")  # pylint: disable=protected-access
  elif method not in config:
    errors.append(f"config.{method}: missing; config.method={method!r} needs its own section "
                  f"(see configs/{method}.py)")
  n = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % n:
    errors.append(f"config.batch_size={config.batch_size} must be a positive multiple of "
                  f"the {n} devices (each device takes batch_size / {n} images).")
  if config.eval_batch_size <= 0 or config.eval_batch_size % n:
    errors.append(f"config.eval_batch_size={config.eval_batch_size} must be a positive "
                  f"multiple of the {n} devices.")
  microbatches = config.get("microbatches", 1)
  if microbatches < 1 or (config.batch_size > 0 and (config.batch_size // n) % microbatches):
    errors.append(f"config.microbatches={microbatches} must divide each device's batch "
                  f"(batch_size / devices = {config.batch_size // n}).")
  if microbatches > 1 and method in methods._METHODS:  # pylint: disable=protected-access
    module = methods.get_method(method)
    if getattr(module, "USES_EXAMPLE_INDEX", False):
      errors.append(f"config.microbatches={microbatches}: config.method={method!r} keeps "
                    "per-example state and runs without micro-batches; set it to 1.")
    elif (getattr(module, "BATCH_COUPLED_LOSS", False)
          and not hasattr(module, "loss_from_embeddings")):
      errors.append(f"config.microbatches={microbatches}: config.method={method!r} computes "
                    "its loss over the whole batch and has no gradient caching (embed / "
                    "loss_from_embeddings), so micro-batches would change the loss, not just "
                    "the memory; set it to 1 (or use more devices / a smaller batch_size).")
  if config.total_steps < 0 or config.total_epochs < 0 or not (
      config.total_steps or config.total_epochs):
    errors.append("config.total_epochs / config.total_steps: set one of them > 0 (total_steps "
                  "wins when > 0).")
  for field in ("log_every_steps", "checkpoint_every_steps"):
    if config[field] < 1:
      errors.append(f"config.{field}={config[field]}: must be >= 1.")
  if config.get("stall_timeout_minutes", 0) < 0:
    errors.append(f"config.stall_timeout_minutes={config.stall_timeout_minutes}: must be >= 0 "
                  "(0 disables the stall watchdog).")
  if (config.checkpoint_max_to_keep is not None  # None: orbax keeps every checkpoint
      and config.checkpoint_max_to_keep < MIN_CHECKPOINTS_KEPT):
    errors.append(f"config.checkpoint_max_to_keep={config.checkpoint_max_to_keep}: must be >= "
                  f"{MIN_CHECKPOINTS_KEPT}, so a checkpoint damaged after it was written "
                  "always has a predecessor to resume from.")
  if config.seed < 0:
    errors.append(f"config.seed={config.seed}: must be >= 0.")
  if config.optim.base_learning_rate < 0 or config.optim.warmup_epochs < 0:
    errors.append("config.optim.base_learning_rate / warmup_epochs: must be >= 0.")
  if config.augment.size < 1:
    errors.append(f"config.augment.size={config.augment.size}: must be >= 1 pixel.")
  if config.data.corrupt_images not in ("skip", "error"):
    errors.append(f"config.data.corrupt_images={config.data.corrupt_images!r}: use 'skip' "
                  "or 'error'.")
  if not errors and method in methods._METHODS:  # pylint: disable=protected-access
    try:
      methods.get_method(method).view_recipes(config)
    except (ValueError, KeyError, TypeError) as e:
      errors.append(f"config.augment: {e}")
  return errors


def validate_config_for_data(config, info: data.DatasetInfo, recipes,
                             total_steps: int, steps_per_epoch: int) -> None:
  """The checks that need the dataset: split sizes, image sizes, schedule lengths."""
  errors = []
  if info.train_size == 0:
    errors.append(f"config.data.train_split={config.data.train_split!r} of {info.name!r} is "
                  "empty; choose a split with examples.")
  elif config.batch_size > info.train_size:
    errors.append(f"config.batch_size={config.batch_size} is larger than the "
                  f"{info.train_size} examples of {config.data.train_split!r}; lower it.")
  if info.image_shape is not None:
    height, width = info.image_shape[:2]
    too_big = sorted({r.size for r in recipes if r.size > min(height, width)})
    if too_big:
      errors.append(f"config.augment.size: views of {too_big} px are larger than the "
                    f"{height}x{width} images of {info.name!r}; set config.augment.size <= "
                    f"{min(height, width)}.")
  warmup_steps = int(round(config.optim.warmup_epochs * max(steps_per_epoch, 1)))
  if total_steps and warmup_steps >= total_steps:
    errors.append(f"config.optim.warmup_epochs={config.optim.warmup_epochs} is {warmup_steps} "
                  f"steps, not shorter than the run's {total_steps}: lower it or train longer.")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def check_workdir(workdir: str) -> None:
  """Fails at once, before any compute, if ``workdir`` cannot be written."""
  if "://" in workdir:
    return  # Cloud storage: orbax reports its own errors.
  probe = os.path.join(os.path.abspath(workdir), f".write_test.{os.getpid()}")
  try:
    os.makedirs(checkpoint.checkpoint_dir(workdir), exist_ok=True)
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"--workdir={workdir!r} is not writable ({e.strerror or e}); choose "
                     "another workdir or fix its permissions.") from e


def check_free_space(workdir: str, state) -> None:
  """Fails before compiling if the disk cannot hold ``FREE_SPACE_CHECKPOINTS`` checkpoints."""
  if "://" in workdir:
    return
  needed = FREE_SPACE_CHECKPOINTS * sum(x.nbytes for x in jax.tree.leaves(state))
  free = shutil.disk_usage(checkpoint.checkpoint_dir(workdir)).free
  if free < needed:
    raise ValueError(
        f"--workdir={workdir!r}: only {free / 2**20:.1f} MiB free, a checkpoint of this run "
        f"needs {needed / FREE_SPACE_CHECKPOINTS / 2**20:.1f} MiB (and "
        f"{FREE_SPACE_CHECKPOINTS} fit at once while saving); free space or use another "
        "workdir.")


class PreemptionNotice:
  """Turns SIGTERM into a flag the loop reads at each step boundary.

  The handler only sets a Python flag (no host sync per step). Installed only
  in the main thread of a single-process run: with ``jax.distributed``, JAX's
  preemption service owns SIGTERM and ``manager.reached_preemption`` tells
  every host the same step to stop at.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: checkpointing at the next step, then exiting.", signum)
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _put_batch(batch: dict, sharding) -> dict:
  """Host-local numpy batch (labels dropped) -> global arrays sharded over the mesh."""
  batch = {k: v for k, v in batch.items() if k in ("image", "views", "index")}
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _meta(config, step: int) -> dict:
  return {"step": int(step), "data_seed": int(config.seed),
          "global_batch_size": int(config.batch_size), "config": config.to_dict()}


def _check_data_position(meta: dict, config) -> None:
  """The restored step is a data position only for the same seed and batch size."""
  for key, value in (("data_seed", config.seed), ("global_batch_size", config.batch_size)):
    if key in meta and meta[key] != value:
      raise ValueError(
          f"The checkpoint was written with {key}={meta[key]} but the config now has "
          f"{value}: resuming would not continue the same data order. Restore the original "
          "value, or start a new workdir with config.init_from pointing at this run.")


def _init_from(state: TrainState, path: str) -> TrainState:
  """Params and batch statistics from another run's checkpoint (step stays 0)."""
  raw, _, step = checkpoint.restore_raw(path)
  logging.info("Initialising params from %s (step %d).", path, step)

  def cast(new, old):
    if np.shape(new) != np.shape(old):
      raise ValueError(f"config.init_from={path!r} has a parameter of shape {np.shape(new)} "
                       f"where this model has {np.shape(old)}; the model configs differ.")
    return jax.device_put(np.asarray(new, old.dtype), old.sharding)

  try:
    params = jax.tree.map(cast, raw["params"], state.params)
    batch_stats = jax.tree.map(cast, raw.get("batch_stats", {}) or {}, state.batch_stats)
  except ValueError as e:
    if "shape" in str(e):
      raise
    raise ValueError(f"config.init_from={path!r} holds a different parameter tree than this "
                     f"model ({e}); the model/method configs differ.") from e
  return state.replace(params=params, batch_stats=batch_stats)


def _first_nonfinite(fetched: list[dict], first_step: int) -> int | None:
  """The step (1-based count) of the first non-finite metrics in ``fetched``, if any."""
  for i, metrics in enumerate(fetched):
    if not metrics["finite"]:
      return first_step + i + 1
  return None


def _nonfinite_error(step: int, loss: float, manager) -> FloatingPointError:
  checkpoint.wait_until_finished(manager)
  manager.reload()
  good = manager.latest_step()
  where = (f"step {good} in {manager.directory}" if good is not None else
           "none (the run had not saved one yet)")
  return FloatingPointError(
      f"Non-finite loss or gradients at step {step} (loss {loss}); stopping without saving "
      f"this state. The last good checkpoint is {where}; rerunning resumes from it. Lower "
      "config.optim.base_learning_rate, check the data, or set "
      "config.skip_nonfinite_updates=True to skip such updates.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None) -> dict:
  """Pre-trains ``config.method`` and returns the final metrics.

  Resume is automatic: the newest intact checkpoint in ``workdir`` wins (damaged
  ones are quarantined with a warning), else ``config.init_from``, else a
  fresh start. SIGTERM (or a preemption notice through orbax on multi-host
  jobs) checkpoints at the next step boundary and returns with
  ``results['preempted'] = True``.

  Args:
    config: the run config (see ``configs/``).
    workdir: checkpoints, metrics.jsonl, TensorBoard events, curves.png,
      feature_map.png (written when the run finishes).
    stop_at_step: stop early at this step with a checkpoint, as a preempted
      run would; the schedule is still the one of the whole run.
  """
  validate_config(config)
  check_workdir(workdir)
  stall = watchdog.StallWatchdog(60 * config.get("stall_timeout_minutes", 0))
  with PreemptionNotice() as notice, stall:
    return _train(config, workdir, stop_at_step, notice, stall)


def _train(config, workdir: str, stop_at_step: int | None, notice: PreemptionNotice,
           stall: watchdog.StallWatchdog) -> dict:
  method = methods.get_method(config.method)
  mesh = run_mesh(config, method)
  info = data.dataset_info(config.data)
  recipes = method.view_recipes(config)
  steps_per_epoch = max(1, info.train_size // config.batch_size)
  total_steps = config.total_steps or int(round(config.total_epochs * steps_per_epoch))
  validate_config_for_data(config, info, recipes, total_steps, steps_per_epoch)
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=total_steps,
                                      steps_per_epoch=steps_per_epoch,
                                      batch_size=config.batch_size)

  state = create_train_state(config, method, tx, mesh)
  check_free_space(workdir, state)
  manager = checkpoint.make_manager(workdir, max_to_keep=config.checkpoint_max_to_keep)
  stall.before_exit(lambda: checkpoint.wait_until_finished(manager))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  restored = checkpoint.restore_latest(manager, abstract)
  if restored is not None:
    state, meta = restored
    _check_data_position(meta, config)
    logging.info("Resumed from %s at step %d.", manager.directory, int(state.step))
  elif config.init_from:
    # Checked here, not in validate_config: a run that resumes from its own
    # checkpoint no longer needs init_from (its source may be gone).
    if "://" not in config.init_from and not os.path.exists(config.init_from):
      raise ValueError(f"config.init_from={config.init_from!r}: no such path; point it at the "
                       "workdir of a finished run, or set it to ''.")
    state = _init_from(state, config.init_from)
  start_step = int(state.step)

  writer = metrics_io.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  if start_step == 0:
    writer.write_config(config)
  # Steps logged after the checkpoint we resume from (a run killed between
  # checkpoints) are run again: their old records go.
  writer.drop_after(start_step)
  step_fn = compile_train_step(mesh, method=method, config=config, recipes=recipes, tx=tx,
                               schedule=schedule, total_steps=total_steps)
  feature_fn = evaluate.make_feature_fn(config, mesh)
  knn_every = int(round(config.knn.every_epochs * steps_per_epoch)) if config.knn.every_epochs else 0

  def run_knn(step):
    with stall.paused():
      acc = evaluate.knn_accuracy(feature_fn, state.params, state.batch_stats, config, mesh,
                                  info.num_classes)
    writer.write(step, {"knn_top1": acc})
    return acc

  results = {"preempted": False}
  if knn_every and start_step == 0:
    results["knn_top1_init"] = run_knn(0)

  sharding = jax.sharding.NamedSharding(mesh, P(BATCH_AXIS))
  batches: Iterator[dict] = data.train_batches(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, crop_recipes=recipes if info.image_shape is None else None)
  progress = metrics_io.progress_bar(total_steps, start_step, enabled=jax.process_index() == 0)
  pending, last_log_time, last_log_step = [], time.perf_counter(), start_step
  collapse_warned = False
  end_step = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
  for step in range(start_step, end_step):
    if hasattr(method, "epoch_start") and step % steps_per_epoch == 0:
      # The method's epoch-start hook (DeepCluster's re-clustering, SwAV's queue
      # start): all it computes goes into the state, so a resume is exact.
      with stall.paused():
        state = epoch_hooks.run_epoch_start(method, state, config=config, mesh=mesh, tx=tx,
                                            step=step, steps_per_epoch=steps_per_epoch,
                                            writer=writer)
    state, metrics = step_fn(state, _put_batch(next(batches), sharding))
    stall.beat()  # the host runs ahead; it blocks (no beats) at the next log if the step hangs
    # Start each step's (tiny) metrics transfer as soon as the step finishes, so
    # the fetch at the log interval finds them on the host and does not wait.
    jax.tree.map(lambda x: x.copy_to_host_async(), metrics)
    pending.append(metrics)
    done = step + 1
    # A Python flag (SIGTERM) or orbax's multi-host preemption sync point.
    preempted = notice.requested or manager.reached_preemption(done)
    save = done % config.checkpoint_every_steps == 0 or done == end_step or preempted
    if done % config.log_every_steps == 0 or done == end_step or preempted:
      # The only host sync of the loop: fetch the metrics of the interval.
      fetched = jax.device_get(pending)
      pending = []
      now = time.perf_counter()
      step_time = (now - last_log_time) / max(1, done - last_log_step)
      bad_step = _first_nonfinite(fetched, last_log_step)
      last_log_time, last_log_step = now, done
      logged = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      nonfinite = len(fetched) - int(sum(m.pop("finite") for m in fetched))
      del logged["finite"]
      if bad_step is not None and not config.get("skip_nonfinite_updates", False):
        raise _nonfinite_error(bad_step, logged["loss"], manager)
      if config.get("skip_nonfinite_updates", False):
        logged["skipped_updates"] = float(state.skipped_updates)
        if nonfinite:
          logging.warning("Steps %d-%d: skipped %d non-finite update(s) (%d in total).",
                          done - len(fetched) + 1, done, nonfinite, int(logged["skipped_updates"]))
      warning = diagnostics.collapse_warning(logged)
      if warning and not collapse_warned:
        logging.warning("Step %d: %s", done, warning)
        collapse_warned = True
      logged.update(images_per_sec=config.batch_size / step_time, ms_per_step=1e3 * step_time)
      writer.write(done, logged)
      progress.update(done - progress.n)
      progress.set_postfix(loss=f"{logged['loss']:.4f}")
      results.update(logged)
    elif save and not config.get("skip_nonfinite_updates", False):
      # Never checkpoint a state a non-finite step went into: check the flags of
      # the steps since the last log (a small transfer, at checkpoint steps only).
      flags = jax.device_get([m["finite"] for m in pending])
      bad_step = _first_nonfinite([{"finite": f} for f in flags], last_log_step)
      if bad_step is not None:
        raise _nonfinite_error(bad_step, float("nan"), manager)
    if save:
      checkpoint.save(manager, done, state, _meta(config, done))
    if preempted:
      checkpoint.wait_until_finished(manager)
      logging.warning("Preempted: saved the checkpoint of step %d in %s; rerun to resume.",
                      done, manager.directory)
      results["preempted"] = True
      break
    if knn_every and done % knn_every == 0 and done != total_steps:
      results["knn_top1"] = run_knn(done)
  if knn_every and end_step == total_steps > start_step and not results["preempted"]:
    results["knn_top1"] = run_knn(total_steps)
  progress.close()
  if (end_step == total_steps > start_step and jax.process_count() == 1
      and not results["preempted"]):
    # The 2-D PCA map of the test features (at most plots.MAX_POINTS of them).
    with stall.paused():
      plots.write_feature_map(workdir, config, state.params, state.batch_stats, mesh,
                              step=total_steps)
  checkpoint.wait_until_finished(manager)
  manager.close()
  writer.close(plot=True)
  results["step"] = int(state.step)
  results["skipped_updates"] = int(state.skipped_updates)
  return results
