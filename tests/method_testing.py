"""Helpers shared by the per-method tests.

Tiny runs: ResNet-10 at base width 4 with the CIFAR stem, 16x16 views of the
offline digits dataset (built once per session into a temporary TFDS data_dir),
heads of width 16/8, global batch 16.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import augment
from ssl_jax import config_lib
from ssl_jax import methods
from ssl_jax import optim
from ssl_jax import train
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS
import tiny_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiling the train step dominates these tests. A smoke run and a one-step
# test of the same config lower to the same program (one_step uses the run's
# schedule), so the session's persistent compilation cache (tests/conftest.py)
# lets the second one skip XLA's compile.


def load_config_module(name: str):
  """configs/<name>.py as a module (configs/ is not a package)."""
  return config_lib.load_module(os.path.join(REPO, "configs", f"{name}.py"))


def tiny_config(method: str, data_dir: str, variant: str = "digits", **overrides):
  """The method's digits config shrunk to a seconds-long CPU run; dotted overrides."""
  c = load_config_module(method).get_config(variant)
  c.data.data_dir = data_dir
  tiny_encoder.apply(c)
  c.batch_size = 16
  c.eval_batch_size = 64
  c.total_steps = 4
  c.log_every_steps = 1
  c.checkpoint_every_steps = 4
  c.knn.every_epochs = 0.0
  c.optim.warmup_epochs = 0.0
  return _override(c, overrides)


def _override(c, overrides: dict):
  """Sets dotted-key fields: {'optim.base_learning_rate': 0.1}."""
  for key, value in overrides.items():
    target = c
    *path, leaf = key.split(".")
    for p in path:
      target = target[p]
    target[leaf] = value
  return c


def method_config(name: str, data_dir: str, **overrides):
  """``tiny_config`` with the kNN monitor on slices (~1 s) and no mid-run checkpoint."""
  c = tiny_config(name, data_dir)
  c.checkpoint_every_steps = 100
  c.data.eval_train_split = "train[:512]"
  c.data.eval_test_split = "test[:256]"
  return _override(c, overrides)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def random_batch(batch_size: int = 16, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)


def one_step(config, devices, batch):
  """(state before, state after, metrics) of one train step on ``devices``, on the host.

  The schedule is the one of a ``config.total_steps`` run (as in ``check_smoke``).
  """
  mesh = make_mesh(devices)
  method = methods.get_method(config.method)
  total_steps = config.total_steps
  tx, schedule = optim.make_optimizer(config.optim, total_steps=total_steps,
                                      steps_per_epoch=total_steps,
                                      batch_size=config.batch_size)
  state = train.create_train_state(config, method, tx, mesh)
  before = jax.device_get(state)
  step = train.compile_train_step(mesh, method=method, config=config,
                                  recipes=method.view_recipes(config), tx=tx,
                                  schedule=schedule, total_steps=total_steps)
  state, metrics = step(state, {"image": jax.device_put(batch, NamedSharding(mesh, P(BATCH_AXIS)))})
  return before, jax.device_get(state), jax.device_get(metrics)


def assert_trees_close(a, b, rtol=1e-4, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def check_smoke(config, workdir: str, extra_metrics=()) -> dict:
  """Runs train_and_evaluate; checks finite losses, logged diagnostics, a checkpoint."""
  results = train.train_and_evaluate(config, workdir)
  records = [r for r in read_metrics(workdir) if "loss" in r]
  assert [r["step"] for r in records] == list(range(1, config.total_steps + 1))
  assert np.all(np.isfinite([r["loss"] for r in records]))
  for key in ("embedding_std", "embedding_std_ratio", "embedding_rank", "alignment",
              "uniformity", "learning_rate", *extra_metrics):
    assert key in records[-1], (key, sorted(records[-1]))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(config.total_steps)))
  assert results["step"] == config.total_steps
  return results


def cosine_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def normalize_np(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def shard_map_8(fn, mesh, num_in: int, out_replicated: bool = True):
  """jit(shard_map(fn)) with ``num_in`` batch-sharded inputs and a replicated output."""
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(BATCH_AXIS),) * num_in,
                               out_specs=P() if out_replicated else P(BATCH_AXIS)))


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
    index = jax.lax.axis_index(BATCH_AXIS) * n + jnp.arange(n)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), index)
    make_views = getattr(method, "make_views", None)
    views = (make_views(keys, images, recipes, config=config) if make_views
             else augment.views(keys, images, recipes))
    extra = {"step": jnp.zeros((), jnp.int32)} if getattr(method, "USES_STEP", False) else {}
    loss, (_, _, metrics) = method.loss_fn(params, batch_stats, method_state, views,
                                           jax.random.key(1), config=config, axis_name=BATCH_AXIS,
                                           **extra)
    return loss, metrics

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(), P(BATCH_AXIS)),
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
