"""MoCo v3: symmetrised in-batch InfoNCE against NumPy (global negatives over 8
devices), momentum schedule and update, 1 vs 8 devices, smoke run."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from ssl_jax.methods import mocov3
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS

import method_testing as mt


def _tiny(data_dir, **overrides):
  return mt.tiny_config("mocov3", data_dir, **{
      "mocov3.projector_hidden_dim": 16, "mocov3.predictor_hidden_dim": 16,
      "mocov3.projection_dim": 8, **overrides})


def _ctr_np(q, k, t):
  """2T * mean_i -log softmax(q_i . k / T)_i over the whole batch (Alg. 1)."""
  logits = mt.normalize_np(q) @ mt.normalize_np(k).T / t
  m = logits.max(1, keepdims=True)
  log_softmax = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
  return -np.mean(np.diag(log_softmax)) * 2 * t


@pytest.mark.parametrize("t", [1.0, 0.2])
def test_contrastive_loss_matches_numpy_and_8_devices(devices, t):
  rng = np.random.default_rng(0)
  q_1, q_2, k_1, k_2 = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(4))
  expected = _ctr_np(q_1, k_2, t) + _ctr_np(q_2, k_1, t)

  def symmetric(q_1, q_2, k_1, k_2, axis_name=None):
    return (mocov3.contrastive_loss(q_1, k_2, t, axis_name)
            + mocov3.contrastive_loss(q_2, k_1, t, axis_name))

  np.testing.assert_allclose(symmetric(q_1, q_2, k_1, k_2), expected, rtol=1e-5)
  sharded = mt.shard_map_8(lambda *a: symmetric(*a, axis_name=BATCH_AXIS), make_mesh(devices), 4)
  np.testing.assert_allclose(sharded(q_1, q_2, k_1, k_2), expected, rtol=1e-5)
  grads = jax.grad(symmetric, argnums=(0, 1, 2, 3))(q_1, q_2, k_1, k_2)
  assert np.any(grads[0] != 0) and np.all(grads[2] == 0) and np.all(grads[3] == 0)


def test_momentum_schedule_and_update_match_numpy():
  rng = np.random.default_rng(1)
  online = {"encoder": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
            "projector": {"b": rng.normal(size=5).astype(np.float32)},
            "predictor": {"w": rng.normal(size=2).astype(np.float32)}}
  key = {k: jax.tree.map(lambda x: x - 1.0, online[k]) for k in ("encoder", "projector")}
  config = mt.load_config_module("mocov3").get_config("cifar10")
  state = {"momentum_encoder": {"params": key, "batch_stats": {}}, "momentum": np.float32(0)}
  total, step = 40, 11
  new = mocov3.post_update(online, {}, state, step, config, total_steps=total)
  m = 1 - (1 - 0.99) * (math.cos(math.pi * (step - 1) / total) + 1) / 2
  np.testing.assert_allclose(new["momentum"], m, rtol=1e-6)
  for name in ("encoder", "projector"):
    expected = jax.tree.map(lambda a, b: m * np.float64(a) + (1 - m) * np.float64(b),
                            key[name], online[name])
    mt.assert_trees_close(new["momentum_encoder"]["params"][name], expected, rtol=1e-6,
                          atol=1e-7)
  np.testing.assert_allclose(mocov3.momentum_schedule(config, total)(total), 1.0)


def test_smoke_run(data_dir, tmp_path):
  config = _tiny(data_dir)
  mt.check_smoke(config, str(tmp_path), extra_metrics=("momentum",))


def test_one_step_8_devices_equals_1_device(data_dir, devices):
  config = _tiny(data_dir)
  batch = mt.random_batch()
  before, s8, m8 = mt.one_step(config, devices, batch)
  _, s1, m1 = mt.one_step(config, devices[:1], batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  mt.assert_trees_close(s8.params, s1.params)
  mt.assert_trees_close(s8.batch_stats, s1.batch_stats)
  mt.assert_trees_close(s8.method_state, s1.method_state)
  # Starts as a copy of the query encoder; after the step exactly the momentum average.
  for name in ("encoder", "projector"):
    mt.assert_trees_equal(before.method_state["momentum_encoder"]["params"][name],
                          before.params[name])
  m = config.mocov3.momentum_base
  for name in ("encoder", "projector"):
    expected = jax.tree.map(lambda a, b: m * np.float64(a) + (1 - m) * np.float64(b),
                            before.method_state["momentum_encoder"]["params"][name],
                            s8.params[name])
    mt.assert_trees_close(s8.method_state["momentum_encoder"]["params"][name], expected,
                          rtol=1e-5, atol=1e-7)
  # With N = 16 keys the loss at init is near 2 * 2T * log(16).
  assert 0 < m8["loss"] < 4 * np.log(16) * 1.5


def test_config_variants():
  module = mt.load_config_module("mocov3")
  c = module.get_config("imagenet2012")
  assert (c.optim.name, c.optim.base_learning_rate, c.optim.weight_decay) == ("lars", 0.3,
                                                                              1.5e-6)
  assert c.mocov3.temperature == 1.0 and c.augment.preset == "byol"
  for variant in ("cifar10", "cifar100", "stl10", "imagenette", "image_folder",
                  "digits,runlocal"):
    module.get_config(variant)
