"""Helpers shared by the per-method tests: tiny configs, one step on n devices.

Tiny means ResNet-18 at base width 4, CIFAR stem, 16-32 px views, batch 16,
the offline digits dataset built into a per-session temporary TFDS data_dir.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ssl_jax import augment

from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.parallel import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def method_config(name: str, data_dir: str, **overrides):
  """``configs/<name>.py:digits`` shrunk to a CPU test, then dotted-key overrides."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  try:
    module = importlib.import_module(name)
  finally:
    sys.path.pop(0)
  c = module.get_config("digits")
  c.data.data_dir = data_dir
  c.model.base_width = 4
  c.augment.size = 16
  c.batch_size = 16
  c.eval_batch_size = 64
  c.total_steps = 4
  c.log_every_steps = 1
  c.checkpoint_every_steps = 100
  c.knn.every_epochs = 0.0
  # kNN monitor on slices, so a test's monitor costs ~1 s.
  c.data.eval_train_split = "train[:512]"
  c.data.eval_test_split = "test[:256]"
  c.optim.warmup_epochs = 0.0
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split(".")
    for p in path:
      target = target[p]
    target[leaf] = value
  return c


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def one_step(config, devices, batch):
  """(params, batch_stats, metrics) after one train step on ``devices``."""
  mesh = make_mesh(devices)
  method = methods.get_method(config.method)
  tx, schedule = optim.make_optimizer(config.optim, total_steps=10, steps_per_epoch=10,
                                      batch_size=config.batch_size)
  state = train.create_train_state(config, method, tx, mesh)
  step = train.compile_train_step(mesh, method=method, config=config,
                                  recipes=method.view_recipes(config), tx=tx, schedule=schedule,
                                  total_steps=10)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  state, metrics = step(state, {"image": jax.device_put(batch, sharding)})
  return jax.device_get(state.params), jax.device_get(state.batch_stats), jax.device_get(metrics)


def loss_on_devices(config, devices, batch, seed=0):
  """(loss, metrics) of the method's forward pass on ``devices`` (no gradient: cheap to compile).

  Views are made as the train step makes them: per-example keys folded with the
  global example index, then ``make_views`` or ``augment.views``.
  """
  mesh = make_mesh(devices)
  method = methods.get_method(config.method)
  recipes = method.view_recipes(config)
  params, batch_stats, method_state = jax.jit(lambda: method.init(
      jax.random.key(seed, impl="rbg"), config, None))()

  def per_device(params, batch_stats, method_state, images):
    n = images.shape[0]
    index = jax.lax.axis_index("batch") * n + jnp.arange(n)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), index)
    make_views = getattr(method, "make_views", None)
    views = (make_views(keys, images, recipes, config=config) if make_views
             else augment.views(keys, images, recipes))
    loss, (_, _, metrics) = method.loss_fn(params, batch_stats, method_state, views,
                                           jax.random.key(1), config=config, axis_name="batch")
    return loss, metrics

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), P("batch")),
                             out_specs=(P(), P())))
  return jax.device_get(fn(params, batch_stats, method_state, batch))


def assert_loss_device_invariant(config, image_size=32, rtol=1e-5):
  """The loss (and metrics) on 8 devices equal those on 1 device for the same batch."""
  batch = np.random.default_rng(0).integers(
      0, 256, (config.batch_size, image_size, image_size, 3), dtype=np.uint8)
  loss8, m8 = loss_on_devices(config, jax.devices(), batch)
  loss1, m1 = loss_on_devices(config, jax.devices()[:1], batch)
  np.testing.assert_allclose(loss8, loss1, rtol=rtol)
  for key in m1:
    if key == "uniformity":  # averaged within each device's share by design
      continue
    # Metrics reduce over devices in another order (the effective rank's eigvalsh
    # of a psum'd Gram matrix moves in the 3rd digit).
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-2, atol=1e-5, err_msg=key)
  return loss8, m8


def assert_one_step_device_invariant(config, image_size=32, rtol=1e-4, atol=1e-6):
  """One step on 8 devices equals one step on 1 device (loss, params, batch stats)."""
  batch = np.random.default_rng(0).integers(
      0, 256, (config.batch_size, image_size, image_size, 3), dtype=np.uint8)
  p8, bs8, m8 = one_step(config, jax.devices(), batch)
  p1, bs1, m1 = one_step(config, jax.devices()[:1], batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  check = lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
  jax.tree.map(check, p8, p1)
  jax.tree.map(check, bs8, bs1)
  return m8
