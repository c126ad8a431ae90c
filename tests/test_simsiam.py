"""SimSiam: loss against NumPy, stop-gradient, 1 vs 8 devices, smoke run with the
collapse diagnostics, the predictor's fixed learning rate in the config."""

from __future__ import annotations

import jax
import numpy as np

from ssl_jax.methods import simsiam
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS

import method_testing as mt


def _tiny(data_dir, **overrides):
  return mt.tiny_config("simsiam", data_dir, **{
      "simsiam.projector_hidden_dim": 16, "simsiam.projection_dim": 16,
      "simsiam.predictor_hidden_dim": 8, **overrides})


def test_symmetric_loss_matches_numpy_and_8_devices(devices):
  rng = np.random.default_rng(0)
  p_1, p_2, z_1, z_2 = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(4))
  expected = -0.5 * (np.mean(mt.cosine_np(p_1, z_2)) + np.mean(mt.cosine_np(p_2, z_1)))
  np.testing.assert_allclose(simsiam.symmetric_loss(p_1, p_2, z_1, z_2), expected, rtol=1e-5, atol=1e-6)
  sharded = mt.shard_map_8(lambda *a: simsiam.symmetric_loss(*a, axis_name=BATCH_AXIS),
                           make_mesh(devices), 4)
  np.testing.assert_allclose(sharded(p_1, p_2, z_1, z_2), expected, rtol=1e-5, atol=1e-6)
  grads = jax.grad(simsiam.symmetric_loss, argnums=(0, 1, 2, 3))(p_1, p_2, z_1, z_2)
  assert np.any(grads[0] != 0) and np.any(grads[1] != 0)
  assert np.all(grads[2] == 0) and np.all(grads[3] == 0)  # the stop-gradient


def test_smoke_run_logs_collapse_diagnostics(data_dir, tmp_path):
  config = _tiny(data_dir)
  mt.check_smoke(config, str(tmp_path))
  records = [r for r in mt.read_metrics(str(tmp_path)) if "loss" in r]
  for r in records:
    assert -1.0 <= r["loss"] <= 1.0
    # std of the L2-normalised z: sqrt(d) * std is ~1 when healthy, 0 collapsed.
    assert 0.0 < r["embedding_std_ratio"] <= np.sqrt(config.simsiam.projection_dim)
    np.testing.assert_allclose(r["embedding_std"] * np.sqrt(config.simsiam.projection_dim),
                               r["embedding_std_ratio"], rtol=1e-5)


def test_one_step_8_devices_equals_1_device(data_dir, devices):
  config = _tiny(data_dir)
  batch = mt.random_batch()
  before, s8, m8 = mt.one_step(config, devices, batch)
  _, s1, m1 = mt.one_step(config, devices[:1], batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
  mt.assert_trees_close(s8.params, s1.params)
  mt.assert_trees_close(s8.batch_stats, s1.batch_stats)
  assert s8.method_state == {}
  assert not np.allclose(s8.params["predictor"]["output"]["kernel"],
                         before.params["predictor"]["output"]["kernel"])


def test_config_variants():
  module = mt.load_config_module("simsiam")
  c = module.get_config("imagenet2012")
  assert c.optim.name == "sgd" and c.optim.base_learning_rate == 0.05
  assert c.optim.weight_decay == 1e-4 and tuple(c.optim.fixed_lr_params) == ("predictor",)
  assert (c.simsiam.projector_layers, c.simsiam.predictor_hidden_dim) == (3, 512)
  assert module.get_config("cifar10").simsiam.projector_layers == 2
  for variant in ("cifar100", "stl10", "imagenette", "image_folder", "digits,runlocal"):
    module.get_config(variant)
