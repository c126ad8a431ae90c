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
from ssl_jax import data
from ssl_jax import diagnostics
from ssl_jax import evaluate
from ssl_jax import metrics_io
from ssl_jax import methods
from ssl_jax import microbatch
from ssl_jax import optim
from ssl_jax.parallel import BATCH_AXIS, make_mesh


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
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  rng: jax.Array


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
    (new_state, metrics): metrics are scalars averaged over the global batch.
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

  (loss, (batch_stats, method_state, metrics)), grads = microbatch.value_and_grad(
      method, state.params, state.batch_stats, state.method_state, views, loss_key,
      config=config, axis_name=axis_name, num_chunks=config.get("microbatches", 1))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  method_state = method.post_update(params, batch_stats, method_state, state.step + 1, config,
                                     total_steps=total_steps)
  metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step),
                 grad_norm=optax.global_norm(grads))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, method_state=method_state)
  return new_state, metrics


def compile_train_step(mesh, **static):
  """``jax.jit(jax.shard_map(train_step))`` with the state donated."""
  step = functools.partial(train_step, **static, axis_name=BATCH_AXIS)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(BATCH_AXIS)),
                               out_specs=(P(), P())), donate_argnums=0)


def create_train_state(config, method, tx, mesh) -> TrainState:
  """A fresh replicated TrainState from ``config.seed``."""
  root = jax.random.key(config.seed)
  # Parameter init draws one normal tensor per layer; with threefry that
  # compiles for ~20 s on a CPU even for a tiny ResNet-18, with the 'rbg'
  # generator in ~2 s. Only the init uses it; the run's keys stay threefry.
  init_key = jax.random.key(config.seed, impl="rbg")

  def make():
    params, batch_stats, method_state = method.init(init_key, config, None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), method_state=method_state,
                      rng=jax.random.key_data(jax.random.fold_in(root, 1)))

  replicated = jax.sharding.NamedSharding(mesh, P())
  return jax.jit(make, out_shardings=replicated)()


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects inconsistent settings before any compute is spent."""
  n = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % n:
    raise ValueError(f"config.batch_size={config.batch_size} must be a positive multiple of "
                     f"the {n} devices (each device takes batch_size / {n} images).")
  if config.eval_batch_size % n:
    raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                     f"the {n} devices.")
  microbatches = config.get("microbatches", 1)
  if microbatches < 1 or (config.batch_size // n) % microbatches:
    raise ValueError(f"config.microbatches={microbatches} must divide each device's batch "
                     f"(batch_size / devices = {config.batch_size // n}).")
  if not (config.total_steps or config.total_epochs):
    raise ValueError("Set config.total_epochs or config.total_steps (> 0).")
  methods.get_method(config.method)


def _put_batch(batch: dict, sharding) -> dict:
  """Host-local numpy batch (labels dropped) -> global arrays sharded over the mesh."""
  batch = {k: v for k, v in batch.items() if k in ("image", "views")}
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       stop_at_step: int | None = None) -> dict:
  """Pre-trains ``config.method`` and returns the final metrics.

  Resume is automatic: an existing checkpoint in ``workdir`` wins, else
  ``config.init_from``, else a fresh start.

  Args:
    config: the run config (see ``configs/``).
    workdir: checkpoints, metrics.jsonl, TensorBoard events, curves.png.
    stop_at_step: stop early at this step with a checkpoint, as a preempted
      run would; the schedule is still the one of the whole run.
  """
  validate_config(config)
  method = methods.get_method(config.method)
  mesh = make_mesh()
  info = data.dataset_info(config.data)
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  total_steps = config.total_steps or int(round(config.total_epochs * steps_per_epoch))
  tx, schedule = optim.make_optimizer(config.optim, total_steps=total_steps,
                                      steps_per_epoch=steps_per_epoch,
                                      batch_size=config.batch_size)
  recipes = method.view_recipes(config)

  state = create_train_state(config, method, tx, mesh)
  manager = checkpoint.make_manager(workdir, max_to_keep=config.checkpoint_max_to_keep)
  if manager.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    state, meta = checkpoint.restore(manager, abstract)
    _check_data_position(meta, config)
    logging.info("Resumed from %s at step %d.", manager.directory, int(state.step))
  elif config.init_from:
    state = _init_from(state, config.init_from)
  start_step = int(state.step)

  writer = metrics_io.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  if start_step == 0:
    writer.write_config(config)
  step_fn = compile_train_step(mesh, method=method, config=config, recipes=recipes, tx=tx,
                               schedule=schedule, total_steps=total_steps)
  feature_fn = evaluate.make_feature_fn(config, mesh)
  knn_every = int(round(config.knn.every_epochs * steps_per_epoch)) if config.knn.every_epochs else 0

  def run_knn(step):
    acc = evaluate.knn_accuracy(feature_fn, state.params, state.batch_stats, config, mesh,
                                info.num_classes)
    writer.write(step, {"knn_top1": acc})
    return acc

  results = {}
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
    state, metrics = step_fn(state, _put_batch(next(batches), sharding))
    pending.append(metrics)
    done = step + 1
    if done % config.log_every_steps == 0 or done == end_step:
      # The only host sync of the loop: fetch the metrics of the interval.
      fetched = jax.device_get(pending)
      pending = []
      now = time.perf_counter()
      step_time = (now - last_log_time) / max(1, done - last_log_step)
      last_log_time, last_log_step = now, done
      logged = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
      if not np.isfinite(logged["loss"]):
        manager.wait_until_finished()
        raise FloatingPointError(
            f"Loss is {logged['loss']} at step {done}; stopping without saving this state. "
            f"The last good checkpoint is step {manager.latest_step()}. Lower "
            "config.optim.base_learning_rate or check the data.")
      warning = diagnostics.collapse_warning(logged)
      if warning and not collapse_warned:
        logging.warning("Step %d: %s", done, warning)
        collapse_warned = True
      logged.update(images_per_sec=config.batch_size / step_time, ms_per_step=1e3 * step_time)
      writer.write(done, logged)
      progress.update(done - progress.n)
      progress.set_postfix(loss=f"{logged['loss']:.4f}")
      results.update(logged)
    if done % config.checkpoint_every_steps == 0 or done == end_step:
      checkpoint.save(manager, done, state, _meta(config, done))
    if knn_every and done % knn_every == 0 and done != total_steps:
      results["knn_top1"] = run_knn(done)
  if knn_every and end_step == total_steps > start_step:
    results["knn_top1"] = run_knn(total_steps)
  progress.close()
  manager.wait_until_finished()
  manager.close()
  writer.close(plot=True)
  results["step"] = int(state.step)
  return results
