"""BYOL and its GN+WS variant: loss and EMA against NumPy, 1 vs 8 devices, smoke runs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import byol
from ssl_jax.methods import common
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS

import method_testing as mt


def _byol_loss_np(p_1, p_2, z_1, z_2):
  return np.mean(2 - 2 * mt.cosine_np(p_1, z_2)) + np.mean(2 - 2 * mt.cosine_np(p_2, z_1))


def test_symmetric_loss_matches_numpy_and_8_devices(devices):
  rng = np.random.default_rng(0)
  p_1, p_2, z_1, z_2 = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(4))
  expected = _byol_loss_np(p_1, p_2, z_1, z_2)
  np.testing.assert_allclose(byol.symmetric_loss(p_1, p_2, z_1, z_2), expected, rtol=1e-5)
  sharded = mt.shard_map_8(lambda *a: byol.symmetric_loss(*a, axis_name=BATCH_AXIS),
                           make_mesh(devices), 4)
  np.testing.assert_allclose(sharded(p_1, p_2, z_1, z_2), expected, rtol=1e-5)
  # The gradient reaches only the predictions.
  grads = jax.grad(byol.symmetric_loss, argnums=(0, 1, 2, 3))(p_1, p_2, z_1, z_2)
  assert np.any(grads[0] != 0) and np.any(grads[1] != 0)
  assert np.all(grads[2] == 0) and np.all(grads[3] == 0)


def test_tau_schedule_and_ema_match_numpy():
  total = 50
  schedule = common.cosine_tau_schedule(0.996, total)
  for k in (0, 1, 17, 25, 49, 50, 60):
    kk = min(k, total)
    expected = 1 - (1 - 0.996) * (math.cos(math.pi * kk / total) + 1) / 2
    np.testing.assert_allclose(schedule(k), expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(schedule(0), 0.996, rtol=1e-7)
  np.testing.assert_allclose(schedule(total), 1.0, rtol=1e-7)

  rng = np.random.default_rng(1)
  online = {"encoder": {"w": rng.normal(size=(3, 4))}, "projector": {"b": rng.normal(size=5)},
            "predictor": {"w": rng.normal(size=(2, 2))}}
  target = {"encoder": {"w": rng.normal(size=(3, 4))}, "projector": {"b": rng.normal(size=5)}}
  online = jax.tree.map(lambda x: np.asarray(x, np.float32), online)
  target = jax.tree.map(lambda x: np.asarray(x, np.float32), target)
  config = mt.load_config_module("byol").get_config("digits")
  state = {"target": {"params": target, "batch_stats": {}}, "tau": np.float32(0.99)}
  step = 7  # the 7th update, k = 6
  new = byol.post_update(online, {}, state, step, config, total_steps=total)
  tau = 1 - (1 - config.byol.tau_base) * (math.cos(math.pi * 6 / total) + 1) / 2
  np.testing.assert_allclose(new["tau"], tau, rtol=1e-6)
  for name in ("encoder", "projector"):
    for leaf in target[name]:
      expected = (tau * np.float64(target[name][leaf])
                  + (1 - tau) * np.float64(online[name][leaf]))
      np.testing.assert_allclose(new["target"]["params"][name][leaf], expected, rtol=1e-5,
                                 atol=1e-6)
  assert "predictor" not in new["target"]["params"]


def _tiny(data_dir, variant="digits", **overrides):
  return mt.tiny_config("byol", data_dir, variant=variant, **{
      "byol.projector_hidden_dim": 16, "byol.predictor_hidden_dim": 16,
      "byol.projection_dim": 8, **overrides})


def test_smoke_run(data_dir, tmp_path):
  config = _tiny(data_dir)
  mt.check_smoke(config, str(tmp_path), extra_metrics=("tau",))
  taus = [r["tau"] for r in mt.read_metrics(str(tmp_path)) if "tau" in r]
  assert taus[0] == pytest.approx(config.byol.tau_base) and taus[-1] > taus[0]


def test_one_step_8_devices_equals_1_device_and_target_is_only_the_ema(data_dir, devices):
  config = _tiny(data_dir)  # the smoke run's config: its compiled step is cached
  batch = mt.random_batch()
  before, s8, m8 = mt.one_step(config, devices, batch)
  _, s1, m1 = mt.one_step(config, devices[:1], batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  mt.assert_trees_close(s8.params, s1.params)
  mt.assert_trees_close(s8.batch_stats, s1.batch_stats)
  mt.assert_trees_close(s8.method_state, s1.method_state)
  # No gradient or optimizer update reaches the target: after the step it is
  # exactly the EMA (tau_0 = tau_base) of its old value and the new online params.
  tau = config.byol.tau_base
  for name in ("encoder", "projector"):
    expected = jax.tree.map(lambda t, o: tau * np.float64(t) + (1 - tau) * np.float64(o),
                            before.method_state["target"]["params"][name], s8.params[name])
    mt.assert_trees_close(s8.method_state["target"]["params"][name], expected, rtol=1e-5,
                          atol=1e-7)
  assert "predictor" not in s8.method_state["target"]["params"]
  # The online network moved, and online and target started apart (two keys).
  assert not np.allclose(s8.params["encoder"]["stem_conv"]["kernel"],
                         before.params["encoder"]["stem_conv"]["kernel"])
  assert not np.allclose(before.params["projector"]["output"]["kernel"],
                         before.method_state["target"]["params"]["projector"]["output"]["kernel"])
  # The target's BN statistics come from its own forward pass.
  assert not np.allclose(
      s8.method_state["target"]["batch_stats"]["projector"]["hidden_bn_0"]["mean"],
      before.method_state["target"]["batch_stats"]["projector"]["hidden_bn_0"]["mean"])
  assert 0 <= m8["loss"] <= 8


def test_gn_ws_variant_has_no_batch_statistics(data_dir):
  """Traced only (no compile): the state of the GN+WS variant holds no batch statistics."""
  config = _tiny(data_dir, variant="digits,gn_ws")
  assert config.model.norm == "group_ws" and config.byol.head_norm == "layer"
  params, batch_stats, method_state = jax.eval_shape(
      lambda: byol.init(jax.random.key(0), config, None))
  assert not jax.tree.leaves(batch_stats)
  assert not jax.tree.leaves(method_state["target"]["batch_stats"])
  assert "hidden_ln_0" in params["projector"] and "hidden_ln_0" in params["predictor"]
  # The loss traces without any mutable batch statistics.
  views = [jax.ShapeDtypeStruct((4, 16, 16, 3), jnp.float32)] * 2
  loss, (new_stats, new_state, metrics) = jax.eval_shape(
      lambda p, s, v: byol.loss_fn(p, {}, s, v, None, config=config, axis_name=None),
      params, method_state, views)
  assert loss.shape == () and not jax.tree.leaves(new_stats)
  assert not jax.tree.leaves(new_state["target"]["batch_stats"])


def test_config_variants():
  module = mt.load_config_module("byol")
  c = module.get_config("imagenet2012")
  assert (c.optim.base_learning_rate, c.optim.weight_decay, c.byol.tau_base) == (0.2, 1.5e-6,
                                                                                 0.996)
  assert c.augment.preset == "byol" and c.batch_size == 4096
  for variant in ("cifar10", "cifar100", "stl10", "imagenette", "image_folder",
                  "cifar10,gn_ws,runlocal"):
    module.get_config(variant)
  with pytest.raises(ValueError, match="cifar11"):
    module.get_config("cifar11")
