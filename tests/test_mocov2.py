"""MoCo v2: InfoNCE against NumPy, queue FIFO across 8 devices, momentum update,
global-batch BN statistics of the key encoder (1 vs 8 devices), smoke run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import common
from ssl_jax.methods import mocov2
from ssl_jax.parallel import make_mesh
from ssl_jax.parallel import BATCH_AXIS

import method_testing as mt


def _tiny(data_dir, **overrides):
  return mt.tiny_config("mocov2", data_dir, **{
      "mocov2.projector_hidden_dim": 16, "mocov2.projection_dim": 8,
      "mocov2.queue_size": 48, **overrides})


def _info_nce_np(q, k, queue, t):
  q, k = mt.normalize_np(q), mt.normalize_np(k)
  logits = np.concatenate([np.sum(q * k, -1, keepdims=True), q @ np.float64(queue).T], 1) / t
  m = logits.max(1, keepdims=True)
  log_z = m[:, 0] + np.log(np.exp(logits - m).sum(1))
  return np.mean(log_z - logits[:, 0])


def test_contrastive_loss_matches_numpy_and_8_devices(devices):
  rng = np.random.default_rng(0)
  q, k = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(2))
  queue = mt.normalize_np(rng.normal(size=(32, 8))).astype(np.float32)
  expected = _info_nce_np(q, k, queue, 0.2)
  np.testing.assert_allclose(mocov2.contrastive_loss(q, k, queue, 0.2), expected, rtol=1e-5)
  sharded = jax.jit(jax.shard_map(
      lambda q, k, queue: mocov2.contrastive_loss(q, k, queue, 0.2, axis_name=BATCH_AXIS),
      mesh=make_mesh(devices), in_specs=(jax.P(BATCH_AXIS), jax.P(BATCH_AXIS), jax.P()),
      out_specs=jax.P()))
  np.testing.assert_allclose(sharded(q, k, queue), expected, rtol=1e-5)
  grads = jax.grad(mocov2.contrastive_loss, argnums=(0, 1, 2))(q, k, queue, 0.2)
  assert np.any(grads[0] != 0) and np.all(grads[1] == 0) and np.all(grads[2] == 0)


def test_queue_fifo_across_8_devices_matches_numpy(devices):
  """Global order (device 0's keys first), overwrite of the oldest, wrap-around."""
  size, dim = 48, 3  # 2 keys per device, global batch 16: 3 pushes fill the queue, the 4th wraps
  mesh = make_mesh(devices)

  def push(queue, keys):
    return common.queue_push(queue, common.gather_replicated(keys, BATCH_AXIS))

  step = jax.jit(jax.shard_map(push, mesh=mesh, in_specs=(jax.P(), jax.P(BATCH_AXIS)),
                               out_specs=jax.P()))
  queue = {"keys": jnp.zeros((size, dim)), "pointer": jnp.zeros((), jnp.int32),
           "filled": jnp.zeros((), jnp.int32)}
  model = np.zeros((size, dim))
  fifo = []  # the NumPy model: a list of rows, oldest first
  for t in range(5):
    batch = np.arange(16 * dim, dtype=np.float32).reshape(16, dim) + 1000 * (t + 1)
    queue = step(queue, batch)
    fifo.extend(batch)  # global order: the rows as sharded (device 0's first)
    fifo = fifo[-size:]
    # Ring-buffer position of the i-th row ever pushed is i % size.
    for i, row in enumerate(batch):
      model[(16 * t + i) % size] = row
    np.testing.assert_array_equal(queue["keys"], model)
    if len(fifo) == size:  # full: the queue holds exactly the newest `size` keys
      np.testing.assert_array_equal(np.sort(np.asarray(queue["keys"]), axis=0),
                                    np.sort(np.stack(fifo), axis=0))
    assert int(queue["pointer"]) == 16 * (t + 1) % size
    assert int(queue["filled"]) == min(16 * (t + 1), size)
  with pytest.raises(ValueError, match="multiple"):
    common.queue_push(queue, jnp.zeros((20, dim)))


def test_momentum_update_matches_numpy():
  rng = np.random.default_rng(1)
  online = {"encoder": {"w": rng.normal(size=(3, 4)).astype(np.float32)},
            "projector": {"b": rng.normal(size=5).astype(np.float32)}}
  key = jax.tree.map(lambda x: x + 1.0, online)
  config = mt.load_config_module("mocov2").get_config("imagenet2012")
  state = {"key_encoder": {"params": key, "batch_stats": {}}, "queue": {}}
  new = mocov2.post_update(online, {}, state, 3, config, total_steps=10)
  m = config.mocov2.momentum
  expected = jax.tree.map(lambda k, o: m * np.float64(k) + (1 - m) * np.float64(o), key, online)
  mt.assert_trees_close(new["key_encoder"]["params"], expected, rtol=1e-6, atol=1e-7)


def test_smoke_run(data_dir, tmp_path):
  config = _tiny(data_dir)
  mt.check_smoke(config, str(tmp_path), extra_metrics=("queue_fill",))
  fills = [r["queue_fill"] for r in mt.read_metrics(str(tmp_path)) if "queue_fill" in r]
  np.testing.assert_allclose(fills, [0, 1 / 3, 2 / 3, 1])  # before each step's push


def test_one_step_8_devices_equals_1_device(data_dir, devices):
  """Also: the key encoder's BN statistics are the global batch's (no per-device leak)."""
  config = _tiny(data_dir)
  batch = mt.random_batch()
  before, s8, m8 = mt.one_step(config, devices, batch)
  _, s1, m1 = mt.one_step(config, devices[:1], batch)
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  mt.assert_trees_close(s8.params, s1.params)
  mt.assert_trees_close(s8.batch_stats, s1.batch_stats)
  mt.assert_trees_close(s8.method_state["key_encoder"], s1.method_state["key_encoder"])
  # The queue got the 16 keys in global order, at the same rows on 1 and 8 devices:
  # each row's nearest key of the 1-device queue is the one at the same row (exact,
  # no tolerance); and the keys agree to float32 sums in another order (1.5e-6 on an
  # AVX2-only CPU, where a misplaced key would be O(1) off).
  keys8, keys1 = s8.method_state["queue"]["keys"][:16], s1.method_state["queue"]["keys"][:16]
  np.testing.assert_array_equal(np.argmax(keys8 @ keys1.T, axis=1), np.arange(16))
  mt.assert_trees_close(s8.method_state["queue"], s1.method_state["queue"], rtol=1e-5,
                        atol=1e-5)
  assert int(s8.method_state["queue"]["pointer"]) == 16
  np.testing.assert_allclose(np.linalg.norm(s8.method_state["queue"]["keys"][:16], axis=-1), 1,
                             rtol=1e-5)
  np.testing.assert_array_equal(s8.method_state["queue"]["keys"][16:],
                                before.method_state["queue"]["keys"][16:])
  # The key encoder started as a copy of the query encoder, and after the step
  # it is exactly the momentum average (nothing else, no gradient, touched it).
  mt.assert_trees_equal(before.method_state["key_encoder"]["params"], before.params)
  m = config.mocov2.momentum
  expected = jax.tree.map(lambda k, o: m * np.float64(k) + (1 - m) * np.float64(o),
                          before.method_state["key_encoder"]["params"], s8.params)
  mt.assert_trees_close(s8.method_state["key_encoder"]["params"], expected, rtol=1e-5,
                        atol=1e-7)


def test_config_variants():
  module = mt.load_config_module("mocov2")
  c = module.get_config("imagenet2012")
  assert (c.mocov2.temperature, c.mocov2.queue_size, c.mocov2.momentum) == (0.2, 65536, 0.999)
  assert c.optim.name == "sgd" and c.optim.base_learning_rate == 0.03
  for variant in ("cifar10", "cifar100", "stl10", "imagenette", "image_folder",
                  "digits,runlocal"):
    c = module.get_config(variant)
    assert c.mocov2.queue_size % c.batch_size == 0
